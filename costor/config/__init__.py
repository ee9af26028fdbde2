"""The inventory: ``inventory.toml`` + ``profiles/*.toml`` -> typed, frozen model.

Owns parsing (with the position of every key), profile merging, validation with
diagnostics that name file, line, column and key, and reading secrets on demand. Does no
I/O beyond reading the inventory, its profile files and secret files/variables.

Entry points: :func:`load_inventory` (raises :class:`costor.errors.InventoryInvalid`),
:func:`check_inventory` (returns the diagnostics, for ``costor validate``) and
:func:`resolve_secret`.
"""

from costor.config.diagnostics import Diagnostic, format_key
from costor.config.loader import check_inventory, load_inventory
from costor.config.model import (
    BUILTIN_ROLES,
    PERMISSIONS,
    CheckPolicy,
    ClientConfig,
    Compression,
    CostorSettings,
    GroupConfig,
    Hooks,
    Inventory,
    MovedBlock,
    PolicyConfig,
    PoolConfig,
    RateLimit,
    RemovedBlock,
    Retention,
    RoleConfig,
    SecretRef,
    SiteConfig,
    SshOptions,
    UserConfig,
)
from costor.config.positions import KeyPath, Position, PositionMap, scan_positions
from costor.config.secret import resolve_secret

__all__ = [
    "BUILTIN_ROLES",
    "PERMISSIONS",
    "CheckPolicy",
    "ClientConfig",
    "Compression",
    "CostorSettings",
    "Diagnostic",
    "GroupConfig",
    "Hooks",
    "Inventory",
    "KeyPath",
    "MovedBlock",
    "PolicyConfig",
    "PoolConfig",
    "Position",
    "PositionMap",
    "RateLimit",
    "RemovedBlock",
    "Retention",
    "RoleConfig",
    "SecretRef",
    "SiteConfig",
    "SshOptions",
    "UserConfig",
    "check_inventory",
    "format_key",
    "load_inventory",
    "resolve_secret",
    "scan_positions",
]
