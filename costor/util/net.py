"""Network addresses: the one rule of what is "this machine" (plain HTTP goes nowhere
else: the server's listen address, the CLI's ``--server``, a pool's ``http://``)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1``, with or without
    brackets) or ``localhost``. Any other name could resolve anywhere, so it is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["is_loopback"]
