"""The admin API, dashboard, metrics and PAC file, served by the worker process."""
