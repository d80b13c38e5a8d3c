"""A free loopback port, for the tests' and the benchmarks' servers."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", both: bool = False) -> int:
    """A port free for TCP (and for UDP too with ``both``, as a resolver needs) right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            if not both:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")
