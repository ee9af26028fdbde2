"""The former name of :mod:`costor.transport.ssh` (see :mod:`costor.remote`)."""

from costor.transport.ssh import HostKey

__all__ = ["HostKey"]
