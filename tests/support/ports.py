"""Free loopback ports for the servers the tests start."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stable_port() -> int:
    """Return a free loopback port below the kernel's ephemeral range.

    A port that must stay free for a while (the CA writes the PKI URL into certificates before the gateway binds
    it; a killed or restarted component must get its port back) cannot come from the ephemeral range, where
    every outgoing connection may take it meanwhile.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(500):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port below the ephemeral range")
