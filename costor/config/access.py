"""Who may do what: the built-in roles, the permissions a role grants, and the
``[roles.NAME]``, ``[groups.NAME]`` and ``[users.NAME]`` tables. Pure data; which names
refer to declared ones is checked by :mod:`costor.config.loader`.

A user's rights are its groups' grants: each group grants its roles' permissions on its
``clients`` (names or globs; none: every client). :func:`user_grants` lists them; what a
request may do (the user's grants, limited by its token) is decided in one place,
``costor.ops.control.tokens.Grant``.
"""

from __future__ import annotations

import fnmatch
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictStr, field_validator, model_serializer

from costor.config.fields import FrozenModel, NonEmptyStr, SecretRef

# What a role may grant. "admin" is everything, including users, the audit log and
# deleting a pool's objects through the Backup API.
Permission = Literal[
    "admin",
    "snapshots.read",
    "snapshots.restore",
    "backups.run",
    "jobs.read",
    "jobs.manage",
    "config.read",
    "users.manage",
    "audit.read",
    "snapshots.list",
    "maintenance.run",
    "objects.append",
    "objects.read",
]
PERMISSIONS: tuple[str, ...] = typing.get_args(Permission)

# What each permission lets a caller do (docs/server.md has the routes of each).
MEANING: dict[str, str] = {
    "admin": "everything",
    "config.read": "the status, clients, pools and sites (health, not content)",
    "jobs.read": "the job list and each job",
    "jobs.manage": "cancel jobs",
    "snapshots.list": "which snapshots exist (ids, times, sizes)",
    "snapshots.read": "backed-up content: browse trees, file versions, download",
    "snapshots.restore": "restore",
    "backups.run": "back up now",
    "maintenance.run": "check, forget, prune, self-test now; maintenance on/off",
    "users.manage": "users and their tokens",
    "audit.read": "the audit log",
    # The Backup API (a pool's stored objects, as they are: encrypted, no key needed).
    # A pool holds every client's data, so both are held on the whole site or not at all.
    "objects.append": "the Backup API: add objects to a pool, see which exist and their "
    "sizes (never read one back, never delete): agents and peer sites",
    "objects.read": "the Backup API: read a pool's stored objects and list them (for a "
    "copy or a replica; still encrypted)",
}

# A permission that needs another to mean anything brings it: one cannot browse, restore
# or list the content of snapshots one may not list, nor cancel a job one may not see.
IMPLIES: dict[str, tuple[str, ...]] = {
    "admin": PERMISSIONS,
    "snapshots.read": ("snapshots.list",),
    "snapshots.restore": ("snapshots.list",),
    "jobs.manage": ("jobs.read",),
}

# Roles every installation has without declaring them; a group names them like declared
# ones. ``[roles.NAME]`` adds more (a declared role may not reuse these names).
BUILTIN_ROLES: dict[str, tuple[str, ...]] = {
    "admin": ("admin",),
    "operator": (
        "config.read",
        "jobs.read",
        "jobs.manage",
        "snapshots.list",
        "snapshots.read",
        "snapshots.restore",
        "backups.run",
        "maintenance.run",
    ),
    "auditor": ("config.read", "jobs.read", "snapshots.list", "audit.read"),
    # Granted on a group's clients only (the loader refuses it in a group without them).
    # config.read on their clients: their health against the RPO (the status, the
    # clients and their pool as seen through them), never another client's.
    "end-user": (
        "config.read",
        "snapshots.list",
        "snapshots.read",
        "snapshots.restore",
        "jobs.read",
    ),
    # Kept for the inventories that name it: reads everything, content included.
    "viewer": ("config.read", "jobs.read", "snapshots.list", "snapshots.read"),
}
# Roles that make sense only on named clients (a person's own machines).
OWN_CLIENTS_ONLY = ("end-user",)

_CLIENT_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]+$")


def client_pattern(value: str) -> str:
    """A client name or glob (``web-*``, ``db?``, ``[ab]*``), as a group or token names it."""
    if not _CLIENT_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a client name or glob")
    return value


ClientPattern = Annotated[StrictStr, AfterValidator(client_pattern)]


class RoleConfig(FrozenModel):
    """``[roles.NAME]``: a named set of permissions that groups grant their members."""

    name: StrictStr
    permissions: Annotated[tuple[Permission, ...], Field(min_length=1)]
    description: StrictStr | None = None


class GroupConfig(FrozenModel):
    """``[groups.NAME]``: its members hold its roles on its ``clients`` (names or globs;
    left out: every client)."""

    name: StrictStr
    # Built-in roles (admin, operator, auditor, end-user, viewer) or declared
    # [roles.NAME]; checked by the loader, which sees the whole inventory.
    roles: tuple[NonEmptyStr, ...] = ()
    clients: Annotated[tuple[ClientPattern, ...], Field(min_length=1)] | None = None

    @model_serializer(mode="wrap")
    def _omit_every_client(self, handler: Any) -> Any:
        # Left out when absent: groups applied before the key existed are unchanged.
        document = handler(self)
        if isinstance(document, dict) and document.get("clients", ()) is None:
            document.pop("clients")
        return document


class UserConfig(FrozenModel):
    name: StrictStr
    groups: tuple[StrictStr, ...] = ()
    password: SecretRef
    email: StrictStr | None = None

    @field_validator("email")
    @classmethod
    def _email_shape(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[^@\s]+@[^@\s]+$", value):
            raise ValueError(f"expected an e-mail address, got {value!r}")
        return value


@dataclass(frozen=True)
class RoleGrant:
    """Permissions (implied ones included) on some clients (None: every client)."""

    permissions: frozenset[str]
    clients: tuple[str, ...] | None

    def covers(self, client: str) -> bool:
        return self.clients is None or any(fnmatch.fnmatchcase(client, p) for p in self.clients)


def role_permissions(role: str, roles: Mapping[str, RoleConfig]) -> frozenset[str]:
    """The permissions ``role`` (built in or declared) grants, implied ones included."""
    declared = roles.get(role)
    named = BUILTIN_ROLES.get(role, declared.permissions if declared is not None else ())
    granted = set(named)
    for permission in named:
        granted.update(IMPLIES.get(permission, ()))
    return frozenset(granted)


def user_grants(
    user: UserConfig, groups: Mapping[str, GroupConfig], roles: Mapping[str, RoleConfig]
) -> tuple[RoleGrant, ...]:
    """What ``user`` may do: one grant per role of each of its groups, on the group's
    clients."""
    found = []
    for name in user.groups:
        group = groups.get(name)
        for role in group.roles if group is not None else ():
            permissions = role_permissions(role, roles)
            if permissions:
                found.append(RoleGrant(permissions, group.clients if group else None))
    return tuple(found)
