"""Ports for the brokers and servers a test starts itself.

Chosen below the kernel's ephemeral range (ip_local_port_range, 32768+ here), so an outgoing connection made by
another process between the check and the server's bind cannot take them; and away from the ports `make test`'s own
broker and Flink cluster use (.ci/run: 28081.., 29092..).
"""
import random
import socket

_RANGE = (20000, 32000)
_TAKEN_BY_THE_SUITE = set(range(28081, 28091)) | set(range(29092, 29096))


def free_port_block(count: int = 1) -> int:
    """The first of `count` consecutive ports that can all be bound now."""
    for _ in range(200):
        first = random.randrange(_RANGE[0], _RANGE[1] - count)
        block = range(first, first + count)
        if not _TAKEN_BY_THE_SUITE.intersection(block) and all(_bindable(port) for port in block):
            return first
    raise RuntimeError(f"no {count} consecutive free ports in {_RANGE}")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
