"""The DNS resolver: a chain of small links from client access to query log."""
