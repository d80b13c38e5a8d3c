"""The DNS resolver: a chain of small links from client access to query log.

Where things are:

- ``chain``: ``Link`` (``resolve(request) -> Reply``), ``Request``, ``Reply``, the runner;
- ``access``: client access list, rate limit;
- ``blocking``: index gate, client/name/answer checks, the ``Sinkhole`` answers;
- ``cache``, ``upstream``, ``querylog`` (events and the query log);
- ``wire``: what is parsed and built on the hot path (see its docstring);
- ``server``: the asyncio UDP/TCP front end (``DnsServer``) and ``run_resolver``;
- ``commands``: ``atr-proxy dns``.

Nothing is imported here, so ``atr-proxy`` starts without loading the resolver.
"""
