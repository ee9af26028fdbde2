"""Who may do what: the built-in roles, the permissions a role grants, and the
``[roles.NAME]``, ``[groups.NAME]`` and ``[users.NAME]`` tables. Pure data; which names
refer to declared ones is checked by :mod:`costor.config.loader`."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Literal

from pydantic import Field, StrictStr, field_validator

from costor.config.fields import FrozenModel, NonEmptyStr, SecretRef

# Roles every installation has without declaring them; a group names them like declared
# ones. ``[roles.NAME]`` adds more (a declared role may not reuse these names).
BUILTIN_ROLES: dict[str, tuple[str, ...]] = {
    "admin": ("admin",),
    "operator": (
        "snapshots.read",
        "snapshots.restore",
        "backups.run",
        "jobs.read",
        "jobs.manage",
        "config.read",
    ),
    "viewer": ("snapshots.read", "jobs.read", "config.read"),
}

# What a role may grant. "admin" is everything, including users and the audit log.
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
]
PERMISSIONS: tuple[str, ...] = typing.get_args(Permission)


class RoleConfig(FrozenModel):
    """``[roles.NAME]``: a named set of permissions that groups grant their members."""

    name: StrictStr
    permissions: Annotated[tuple[Permission, ...], Field(min_length=1)]
    description: StrictStr | None = None


class GroupConfig(FrozenModel):
    name: StrictStr
    # Built-in roles (admin, operator, viewer) or declared [roles.NAME]; checked by the
    # loader, which sees the whole inventory.
    roles: tuple[NonEmptyStr, ...] = ()


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
