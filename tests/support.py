"""For the tests' and the benchmarks' processes: a free loopback port, and a clean stop."""

from __future__ import annotations

import signal
import socket
import subprocess


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


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode
