"""How a pull reaches a client's host: its address and credentials (``target``) and the
host key a connection must see (``trusted_host_key``).

Host keys: trust on first use, then pinned. ``costor apply`` records the key a host
presents the first time (the plan shows its fingerprint); every later connection —
plan, backup — requires that key. A key pinned in the inventory (``ssh.host_key``) wins
over the recorded one. Recording and accepting keys is the control plane's
(:mod:`costor.ops.control.hosts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from costor.config import resolve_secret
from costor.db import hostkeys as db_hostkeys
from costor.db.session import session_scope
from costor.errors import HostKeyUnknown
from costor.ops.context import Context

if TYPE_CHECKING:
    from costor.config.model import ClientConfig
    from costor.transport.ssh import HostKey, Target

# costor.transport.ssh (asyncssh) is imported inside the functions that reach a host or
# make a host key, never here: a local-only command does not import the SSH stack at all
# (tests/cli/test_quiet_local.py).


def target(ctx: Context, client: ClientConfig) -> Target:
    from costor.transport.ssh import Target  # SSH only: see the top

    ssh = client.ssh
    assert client.host is not None  # the model requires a host for ssh
    key = resolve_secret(ssh.key, f"clients.{client.name}.ssh.key") if ssh and ssh.key else None
    return Target(
        client=client.name,
        host=client.host,
        port=ssh.port if ssh else 22,
        user=ssh.user if ssh else None,
        private_key=key,
        jump=ssh.jump if ssh else None,
        sudo=ssh.sudo if ssh else False,
        python=ssh.python if ssh else "python3",
    )


def recorded_host_key(ctx: Context, name: str) -> HostKey | None:
    from costor.transport.ssh import HostKey  # SSH only: see the top

    with session_scope(ctx.engine, write=False) as session:
        row = db_hostkeys.host_key_row(session, name)
        return HostKey(row.key, row.fingerprint) if row else None


def trusted_host_key(ctx: Context, client: ClientConfig) -> HostKey:
    """The key a connection to ``client`` must see: pinned, else recorded."""
    from costor.transport.ssh import HostKey  # SSH only: see the top

    if client.ssh is not None and client.ssh.host_key:
        return HostKey.parse(client.ssh.host_key)
    recorded = recorded_host_key(ctx, client.name)
    if recorded is None:
        raise HostKeyUnknown(client=client.name, host=client.host)
    return recorded
