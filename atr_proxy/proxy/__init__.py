"""The mitmproxy addon that enforces the index on proxied traffic."""
