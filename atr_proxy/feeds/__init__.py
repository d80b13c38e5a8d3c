"""Threat feeds: pure format parsers, fetching and the sync worker."""
