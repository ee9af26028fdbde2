"""Roles as data: what each built-in role grants (implied permissions included), a
user's grants from its groups' roles on their clients, and a group applied before
``clients`` existed left unchanged."""

from __future__ import annotations

from costor.config.access import (
    BUILTIN_ROLES,
    PERMISSIONS,
    GroupConfig,
    RoleConfig,
    UserConfig,
    role_permissions,
    user_grants,
)
from costor.config.fields import SecretRef

CONTENT = {"snapshots.read", "snapshots.restore"}


def test_built_in_roles() -> None:
    assert role_permissions("admin", {}) == frozenset(PERMISSIONS)
    assert not role_permissions("auditor", {}) & CONTENT  # no content
    assert "audit.read" in role_permissions("auditor", {})
    assert role_permissions("end-user", {}) == {
        "config.read",  # their own clients' health
        "snapshots.list",
        "snapshots.read",
        "snapshots.restore",
        "jobs.read",
    }
    operator = role_permissions("operator", {})
    assert {"backups.run", "maintenance.run", "jobs.manage"} <= operator
    assert "admin" not in operator and "users.manage" not in operator
    assert set(BUILTIN_ROLES) == {"admin", "operator", "auditor", "end-user", "viewer"}


def test_a_declared_role_brings_what_its_permissions_need() -> None:
    roles = {"restorer": RoleConfig(name="restorer", permissions=("snapshots.restore",))}
    assert role_permissions("restorer", roles) == {"snapshots.restore", "snapshots.list"}
    manager = {"m": RoleConfig(name="m", permissions=("jobs.manage",))}
    assert role_permissions("m", manager) == {"jobs.manage", "jobs.read"}
    assert role_permissions("nobody", roles) == frozenset()


def test_a_user_holds_each_group_s_roles_on_its_clients() -> None:
    groups = {
        "ops": GroupConfig(name="ops", roles=("auditor",)),
        "mine": GroupConfig(name="mine", roles=("end-user",), clients=("laptop-*",)),
    }
    user = UserConfig(name="ann", groups=("ops", "mine", "gone"), password=SecretRef(env="X"))
    audit, own = user_grants(user, groups, {})
    assert audit.clients is None and audit.covers("anything")
    assert own.covers("laptop-ann") and not own.covers("web1")
    assert "snapshots.read" in own.permissions and "snapshots.read" not in audit.permissions


def test_a_group_without_clients_is_the_document_it_was() -> None:
    before = {"name": "ops", "roles": ["admin"]}
    assert GroupConfig.model_validate(before).model_dump(mode="json") == before
    scoped = GroupConfig(name="ops", roles=("operator",), clients=("web-*",))
    assert scoped.model_dump(mode="json")["clients"] == ["web-*"]
