"""The inventory as typed, frozen pydantic models (the keys: ``inventory.example.toml``).

Each table of ``inventory.toml`` has a model here, but roles, groups and users
(:mod:`costor.config.access`); the value types and the base model are in
:mod:`costor.config.fields`. Conventions, so errors read well:

- ``extra="forbid"`` everywhere: an unknown key is an error, never silently ignored.
- Scalars are strict (``StrictInt``, ``StrictBool``, ``StrictStr``): TOML is typed, so
  ``level = "3"`` or ``sudo = 1`` is a mistake to report, not something to coerce.
- Arrays become tuples (the models are frozen and hashable data).
- Relative filesystem paths on *this* machine (``state_dir``, ``profile_paths``, a local
  pool's ``path``, a secret ``file``) are resolved against the inventory's directory,
  given as ``base_dir`` in the validation context. Paths on a client host (``paths``) are
  not: they must be absolute.
- Rules that involve several keys of one table (``path`` is required when
  ``backend = "local"``) are checked in one ``after`` validator per model that collects
  *all* its findings (:class:`Findings`) and raises them together, each at its own key.
- Features that later issues add (the ``s3`` backend, the ``ssh`` and ``agent``
  transports) are modelled already, so that their keys parse, and then refused with
  "not available yet" by one gate each (``AVAILABLE_BACKENDS``, ``AVAILABLE_TRANSPORTS``).

Cross-references between tables (a client's ``pool`` names a declared pool) and secret
availability are checked by :mod:`costor.config.loader`, which sees the whole inventory.
Models built by hand (not through the loader) skip those checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from costor.config.access import (
    BUILTIN_ROLES,
    PERMISSIONS,
    GroupConfig,
    Permission,
    RoleConfig,
    UserConfig,
)
from costor.config.diagnostics import Diagnostic
from costor.config.fields import (
    LITERAL_SECRET_MESSAGE,
    NAME_PATTERN,
    RESOURCE_TABLES,
    AbsoluteClientPath,
    Address,
    CronSchedule,
    Duration,
    Findings,
    FrozenModel,
    NonEmptyStr,
    Percentage,
    SecretRef,
    duration_seconds,
    inventory_dir,
    iter_secret_refs,
    name_problem,
    percentage_fraction,
    resolve_local_path,
)
from costor.config.positions import KeyPath
from costor.util.net import is_loopback

# Gates for features that are modelled but not implemented yet. A later issue that adds
# one extends the set; nothing else changes.
AVAILABLE_BACKENDS = frozenset({"local", "s3"})
AVAILABLE_TRANSPORTS = frozenset({"local", "ssh"})


# --- [costor] --------------------------------------------------------------------------


class CostorSettings(FrozenModel):
    """``[costor]``: where this installation keeps its state."""

    # Defaults are strings resolved by the validators below, like values from the file.
    state_dir: Path = Field(default=".costor", validate_default=True)
    # Default: SQLite in state_dir. A relative sqlite path is relative to the inventory dir.
    database: StrictStr | None = None
    profile_paths: tuple[Path, ...] = Field(default=("profiles",), validate_default=True)

    @field_validator("state_dir", mode="before")
    @classmethod
    def _resolve_state_dir(cls, value: Any, info: ValidationInfo) -> Any:
        return resolve_local_path(value, info)

    @field_validator("profile_paths", mode="before")
    @classmethod
    def _resolve_profile_paths(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, list | tuple):
            return tuple(resolve_local_path(item, info) for item in value)
        return value

    @field_validator("database", mode="after")
    @classmethod
    def _resolve_sqlite_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        prefix = "sqlite:///"
        if value is None:
            return value
        if not value.startswith(prefix):
            return _postgresql_url(value)
        rest = value[len(prefix) :]
        if rest.startswith("/") or rest.startswith(":memory:") or not rest:
            return value
        return prefix + os.path.normpath(inventory_dir(info) / rest)

    @model_validator(mode="after")
    def _default_database(self) -> CostorSettings:
        if self.database is None:
            return self.model_copy(update={"database": f"sqlite:///{self.state_dir}/state.db"})
        return self

    @property
    def database_url(self) -> str:
        """The database URL, never None once validated."""
        return self.database or f"sqlite:///{self.state_dir}/state.db"


def _postgresql_url(value: str) -> str:
    """``postgresql+psycopg://`` (plain ``postgresql://`` means the same here: psycopg 3
    is the driver CoStor ships). The password never goes in the URL: the inventory is
    committed, and libpq reads it from ``~/.pgpass`` or ``PGPASSWORD``."""
    scheme, separator, rest = value.partition("://")
    if not separator or scheme not in ("postgresql", "postgresql+psycopg"):
        raise ValueError(
            f"unsupported database URL {scheme + '://' if separator else value!r}: expected "
            "sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE"
        )
    credentials = rest.split("@", 1)[0] if "@" in rest else ""
    query = urllib.parse.parse_qs(rest.partition("?")[2])
    if ":" in credentials or "password" in query:
        # Never quote the value: the part after ':' is a password.
        raise ValueError(
            "the database URL contains a password, a secret in a committed file: put it in "
            "~/.pgpass or PGPASSWORD (read by PostgreSQL's client library) instead"
        )
    return "postgresql+psycopg://" + rest


# --- [sites.NAME] ----------------------------------------------------------------------


DEFAULT_LISTEN = "127.0.0.1:8443"


def split_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); ValueError if not."""
    match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$", text)
    port = int(match.group(3)) if match else 0
    if match is None or not 0 < port < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. {DEFAULT_LISTEN}), got {text!r}")
    return match.group(1) or match.group(2), port


class SiteTls(FrozenModel):
    """``tls = { cert = "…", key = "…" }``: PEM files (relative to the inventory)."""

    cert: NonEmptyStr
    key: NonEmptyStr


# Keys added with the site server (issue 20), left out of a site's document while at
# their default: sites recorded before them are not shown as changed.
_SERVER_DEFAULTS: dict[str, Any] = {"listen": None, "tls": None, "insecure_http": False}


class SiteConfig(FrozenModel):
    """``[sites.NAME]``: one location with its own CoStor server and pools.

    ``listen`` (default ``127.0.0.1:8443``) is where ``costor serve`` answers HTTP; with
    ``tls`` it answers HTTPS. Plain HTTP is allowed on a loopback address only, unless
    ``insecure_http = true`` says that something else (a reverse proxy, a private
    network) protects it."""

    name: StrictStr
    url: StrictStr | None = None  # where peers and agents reach this site's server
    replicate_to: tuple[StrictStr, ...] = ()
    maintenance: StrictBool = False
    listen: StrictStr | None = None
    tls: SiteTls | None = None
    insecure_http: StrictBool = False

    @model_serializer(mode="wrap")
    def _omit_server_defaults(self, handler: Any) -> Any:
        document = handler(self)
        for key, default in _SERVER_DEFAULTS.items():
            if isinstance(document, dict) and document.get(key, default) == default:
                document.pop(key, None)
        return document

    @field_validator("listen")
    @classmethod
    def _listen_address(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value

    @model_validator(mode="after")
    def _plain_http_on_loopback_only(self) -> SiteConfig:
        host, _port = split_listen(self.listen or DEFAULT_LISTEN)
        if self.tls is None and not self.insecure_http and not is_loopback(host):
            raise ValueError(
                f"listen = {self.listen!r} is not a loopback address: give the site "
                "tls = { cert = ..., key = ... }, or set insecure_http = true if a reverse "
                "proxy or a private network protects plain HTTP"
            )
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("replicate_to")
    @classmethod
    def _replication_available(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Modelled so that it parses, refused until replication exists: accepted, it
        # would be planned and applied while nothing copies the pools.
        if value:
            raise ValueError(
                "replication (replicate_to) is not available yet: nothing would copy "
                "this site's pools; remove it"
            )
        return value


# --- [pools.NAME] ----------------------------------------------------------------------


class Compression(FrozenModel):
    algorithm: Literal["zstd", "none"] = "zstd"
    # zstd level 3 is zstd's own default; it was measured at 120-200 MB/s per core on text,
    # already the ceiling of the data path (docs/benchmarks.md).
    level: Annotated[StrictInt, Field(ge=1, le=22)] = 3


class RateLimit(FrozenModel):
    """At most ``requests`` storage requests every ``per_seconds`` seconds."""

    requests: Annotated[StrictInt, Field(ge=1)]
    per_seconds: Annotated[StrictInt, Field(ge=1)] = 1


class PrunePolicy(FrozenModel):
    """``prune = { ... }`` on a pool: when ``costor serve`` prunes it, and how."""

    schedule: CronSchedule | None = None  # None: only when `costor prune` is run
    # A pack no snapshot needs is deleted only after it has been unreferenced this long
    # (and every backup running when it was found has finished).
    safety_window: Duration = "1h"
    # Repack a pack once this share of its bytes is no longer needed.
    repack_threshold: Percentage = "50%"
    # Repack more (most unused first) while the unused bytes in partly used packs exceed
    # this share of the needed bytes.
    max_unused: Percentage = "5%"
    max_repack_mib: Annotated[StrictInt, Field(ge=0)] = 1024  # repack work of one run


class PoolConfig(FrozenModel):
    """``[pools.NAME]``: where and how snapshots are stored."""

    name: StrictStr
    site: StrictStr
    backend: Literal["local", "s3"]
    # local backend
    path: Path | None = None
    # encryption and format
    encryption: Literal["aes-256-gcm", "chacha20-poly1305", "none"] = "aes-256-gcm"
    passphrase: SecretRef | None = None
    kdf: Literal["argon2id", "scrypt"] = "argon2id"
    compression: Compression = Compression()
    # Tens of MiB (docs/format.md, "Packs"): few objects and few requests on S3, little
    # waste on a partial last pack. restic uses 16 MiB by default; 32 leans towards S3.
    pack_size_mib: Annotated[StrictInt, Field(ge=4, le=512)] = 32
    # None: the engine's default (~1 MiB average chunks, docs/format.md).
    chunk_avg_kib: StrictInt | None = None
    prevent_destroy: StrictBool = True
    # s3 backend
    bucket: NonEmptyStr | None = None
    endpoint: StrictStr | None = None
    region: StrictStr | None = None
    prefix: StrictStr | None = None
    access_key: SecretRef | None = None
    secret_key: SecretRef | None = None
    path_style: StrictBool = False  # bucket in the path, not the host name (MinIO, Ceph…)
    # apply creates the bucket when it does not exist (else the plan is blocked)
    create_bucket: StrictBool = False
    # storage filters (any backend): read every object back after writing it, for
    # stores that are only eventually consistent. Off by default: AWS S3 and the common
    # S3 servers are strongly consistent and CoStor sends Content-MD5 with every PUT;
    # reading back doubles the traffic of a backup (docs/benchmarks-s3.md).
    verify_writes: StrictBool = False
    verify_delay_s: Annotated[float, Field(ge=0, le=60)] = 0.0  # wait before reading back
    rate_limit: RateLimit | None = None
    # stage packs in state_dir/staging/NAME and upload them in the background
    staging: StrictBool = False
    # scheduled prune (`costor serve`) and the defaults of `costor prune`
    prune: PrunePolicy = Field(default_factory=lambda: PrunePolicy())

    @classmethod
    def from_recorded(cls, name: str, attributes: dict[str, Any], base_dir: Path) -> PoolConfig:
        """A pool as the state recorded it at its last apply (all fields, defaults
        included), e.g. to reach the storage of a pool the inventory no longer declares.
        Keys at their default are left out, so they do not count as written."""
        written = {
            key: value
            for key, value in attributes.items()
            if key in cls.model_fields and value != cls.model_fields[key].default
        }
        return cls.model_validate({**written, "name": name}, context={"base_dir": base_dir})

    @field_validator("backend")
    @classmethod
    def _backend_available(cls, value: str) -> str:
        if value not in AVAILABLE_BACKENDS:
            raise ValueError(f"backend {value!r} is not available yet")
        return value

    @field_validator("path", mode="before")
    @classmethod
    def _resolve_path(cls, value: Any, info: ValidationInfo) -> Any:
        return resolve_local_path(value, info)

    @field_validator("chunk_avg_kib")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and not (64 <= value <= 4096 and value & (value - 1) == 0):
            raise ValueError(f"must be a power of two between 64 and 4096, got {value}")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> PoolConfig:
        findings = Findings(self)
        if self.backend == "local":
            if self.path is None:
                findings.missing("path", "backend 'local' stores the pool in a directory")
            for key in (
                "bucket",
                "endpoint",
                "region",
                "prefix",
                "access_key",
                "secret_key",
                "path_style",
                "create_bucket",
            ):
                if key in self.model_fields_set:  # written in the inventory (or a profile)
                    findings.invalid(key, f"key {key!r} only applies to backend 's3'")
        if self.backend == "s3":
            if self.bucket is None:
                findings.missing("bucket", "backend 's3' needs a bucket")
            if self.path is not None:
                findings.invalid("path", "key 'path' only applies to backend 'local'")
        if self.encryption != "none" and self.passphrase is None:
            findings.missing("passphrase", f"encryption is {self.encryption!r}")
        if self.encryption == "none" and self.passphrase is not None:
            findings.invalid("passphrase", "a passphrase is set but encryption is 'none'")
        findings.raise_if_any()
        return self


# --- [clients.NAME] --------------------------------------------------------------------


_HOST_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-\S+) [A-Za-z0-9+/=]+$"
)


def _host_key(value: str) -> str:
    text = " ".join(value.split()[:2])  # a trailing comment is dropped
    if not _HOST_KEY.match(text):
        raise ValueError(
            "expected an OpenSSH public host key like 'ssh-ed25519 AAAA…' (from "
            "`ssh-keyscan` or /etc/ssh/ssh_host_ed25519_key.pub)"
        )
    return text


class SshOptions(FrozenModel):
    """``ssh = { … }`` of a client with ``transport = "ssh"``."""

    user: NonEmptyStr | None = None  # None: the server's user name
    port: Annotated[StrictInt, Field(ge=1, le=65535)] = 22
    key: SecretRef | None = None  # private key; None: the server's default keys and agent
    sudo: StrictBool = False  # run the helper (and hooks) under `sudo -n`
    jump: NonEmptyStr | None = None  # jump host, [user@]host[:port]
    # Pinned host key; without it the key is recorded by `costor apply` on first contact.
    host_key: Annotated[StrictStr, AfterValidator(_host_key)] | None = None
    python: NonEmptyStr = "python3"  # the host's interpreter for the helper
    # How long a read from the host (or a write to it) may wait: past it, the backup of a
    # host that stopped answering fails instead of hanging (hooks.timeout_s is added
    # while a hook runs). A changed file is hashed whole on the host before its entry is
    # sent: raise this for multi-hundred-GB files on slow disks (docs/ssh.md).
    io_timeout_s: Annotated[StrictInt, Field(ge=1)] = 600


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError("an environment variable's name is letters, digits and _")
    return value


_EnvValue = Annotated[StrictStr, Field(pattern=r"^[^\x00]*$")]


class Hooks(FrozenModel):
    """Commands run on the client before and after a backup; a failure fails the backup."""

    before: tuple[NonEmptyStr, ...] = ()
    after: tuple[NonEmptyStr, ...] = ()
    # Environment variables of every hook command (a profile's parameters: the LV of
    # `lvm-snapshot`). A table: a profile's entries are defaults, the client's win.
    env: dict[Annotated[StrictStr, AfterValidator(_env_name)], _EnvValue] = {}
    # Per command. Generous enough for a database dump of a small site; raise it for
    # large ones rather than let a hung hook block the schedule forever.
    timeout_s: Annotated[StrictInt, Field(ge=1)] = 300


class ImageSpec(FrozenModel):
    """One of a client's ``images``: a block device or a file read as one byte stream.
    Written as its path (``"/dev/vg0/root-snap"``) or as a table with options."""

    path: AbsoluteClientPath
    # How changed blocks are found over SSH: "read" hashes every block on the host and
    # sends those that differ from the previous snapshot's; "thin_delta" asks LVM which
    # blocks of an LVM-thin snapshot changed since ``previous`` (the thin snapshot the
    # last backup read) and reads only those, falling back to "read" when it cannot.
    changes: Literal["read", "thin_delta"] = "read"
    previous: AbsoluteClientPath | None = None  # thin_delta: the last backup's snapshot

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cross_field(self) -> ImageSpec:
        findings = Findings(self)
        if self.changes == "thin_delta" and self.previous is None:
            findings.missing("previous", "changes = 'thin_delta' compares with the last snapshot")
        if self.changes != "thin_delta" and self.previous is not None:
            findings.invalid("previous", "key 'previous' only applies to changes = 'thin_delta'")
        findings.raise_if_any()
        return self


class ClientConfig(FrozenModel):
    """``[clients.NAME]``: a host to back up, with its profiles already merged in."""

    name: StrictStr
    site: StrictStr
    pool: StrictStr
    policy: StrictStr | None = None  # None: backups only when asked (`costor backup`)
    profiles: tuple[StrictStr, ...] = ()
    transport: Literal["local", "ssh", "agent"] = "local"
    host: NonEmptyStr | None = None
    ssh: SshOptions | None = None
    hooks: Hooks = Hooks()
    paths: tuple[AbsoluteClientPath, ...] = ()  # at least one of paths and images
    images: tuple[ImageSpec, ...] = ()  # block devices and image files, one stream each
    exclude: tuple[NonEmptyStr, ...] = ()
    one_file_system: StrictBool = False

    @field_validator("transport")
    @classmethod
    def _transport_available(cls, value: str) -> str:
        if value not in AVAILABLE_TRANSPORTS:
            raise ValueError(f"transport {value!r} is not available yet")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> ClientConfig:
        findings = Findings(self)
        if self.transport in ("ssh", "agent") and self.host is None:
            findings.missing("host", f"transport {self.transport!r} connects to a host")
        if self.transport != "ssh" and self.ssh is not None:
            findings.invalid("ssh", "key 'ssh' only applies to transport 'ssh'")
        if self.transport == "local" and self.host is not None:
            findings.invalid("host", "key 'host' does not apply to transport 'local'")
        if not self.paths and not self.images:
            if "paths" in self.model_fields_set:
                findings.invalid(
                    "paths", "must not be empty (a client backs up a path or an image)"
                )
            else:
                findings.missing("paths", "a client backs up at least one path or image")
        self._images_apart(findings)
        findings.raise_if_any()
        return self

    def _images_apart(self, findings: Findings) -> None:
        """Each image named once, and not also a path (an image is read as one stream, a
        path is walked: say which). An image inside a backed-up directory is allowed: the
        backup stores it as the image, once."""
        seen: dict[str, int] = {}
        for index, image in enumerate(self.images):
            if image.path in seen:
                findings.invalid(
                    ("images", index),
                    f"image {image.path!r} is listed twice (also images[{seen[image.path]}])",
                )
                continue
            seen[image.path] = index
            if image.changes == "thin_delta" and self.transport == "local":
                findings.invalid(
                    ("images", index, "changes"),
                    "changes = 'thin_delta' applies to transport 'ssh' (a local client "
                    "reads every image whole; unchanged chunks are not stored again)",
                )
            if image.path in self.paths:
                findings.invalid(
                    ("images", index),
                    f"{image.path!r} is both in paths and in images: keep it in one "
                    "(images reads it as one byte stream, paths walks it)",
                )
        for index, path in enumerate(self.paths):
            inside = next((i for i in seen if path.startswith(i.rstrip("/") + "/")), None)
            if inside is not None:
                findings.invalid(
                    ("paths", index),
                    f"{path!r} is inside the image {inside!r} (an image is one byte stream)",
                )


# --- [policies.NAME] -------------------------------------------------------------------


class Retention(FrozenModel):
    """How many snapshots to keep per period (restic/borg ``--keep-*`` semantics)."""

    last: Annotated[StrictInt, Field(ge=0)] | None = None
    hourly: Annotated[StrictInt, Field(ge=0)] | None = None
    daily: Annotated[StrictInt, Field(ge=0)] | None = None
    weekly: Annotated[StrictInt, Field(ge=0)] | None = None
    monthly: Annotated[StrictInt, Field(ge=0)] | None = None
    yearly: Annotated[StrictInt, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _keeps_something(self) -> Retention:
        # A retention that keeps nothing would let `forget` delete every snapshot.
        if not any(getattr(self, name) for name in type(self).model_fields):
            keys = ", ".join(type(self).model_fields)
            raise ValueError(f"retention keeps nothing: set at least one of {keys} above 0")
        return self


class CheckPolicy(FrozenModel):
    schedule: CronSchedule
    # Share of pack data to read and verify on each check, least recently verified
    # packs first; None: metadata only.
    read_data_subset: Percentage | None = None


class SelfTestPolicy(FrozenModel):
    """``selftest = { schedule, files }``: restore a random sample of files from the
    latest snapshot to a scratch area and verify them."""

    schedule: CronSchedule
    files: Annotated[StrictInt, Field(ge=1, le=10_000)] = 20


class NotifyPolicy(FrozenModel):
    """``notify = { webhook = { env = "…" }, on = ["failure"] }``: a JSON POST per
    finished job. The URL is a secret (webhook URLs carry their token)."""

    webhook: SecretRef
    on: tuple[Literal["failure", "success"], ...] = ("failure",)
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0


class PolicyConfig(FrozenModel):
    """``[policies.NAME]``: when clients back up, what is kept, when pools are checked."""

    name: StrictStr
    schedule: CronSchedule
    retention: Retention | None = None  # None: keep every snapshot
    check: CheckPolicy | None = None
    selftest: SelfTestPolicy | None = None
    notify: NotifyPolicy | None = None
    # How old the latest good backup may be before `status` calls the client late;
    # None: twice the interval of `schedule`.
    rpo: Duration | None = None


# --- [[moved]] -------------------------------------------------------------------------


class MovedBlock(FrozenModel):
    """``[[moved]]``: resource ``from`` is now called ``to``; its history follows it."""

    from_: Address = Field(alias="from")
    to: Address

    @model_validator(mode="after")
    def _same_kind(self) -> MovedBlock:
        findings = Findings(self)
        from_kind, to_kind = self.from_.split(".", 1)[0], self.to.split(".", 1)[0]
        if from_kind != to_kind:
            findings.invalid("to", f"cannot move a {from_kind} to a {to_kind}")
        elif self.from_ == self.to:
            findings.invalid("to", "'from' and 'to' are the same address")
        findings.raise_if_any()
        return self

    @property
    def kind(self) -> str:
        return self.to.split(".", 1)[0]


class RemovedBlock(FrozenModel):
    """``[[removed]]``: resource ``from`` is gone from the inventory on purpose.

    ``destroy = false`` forgets it (the state drops it; a pool's data and a client's
    snapshots stay where they are). ``destroy = true`` is the explicit flag that also
    deletes what it holds: a pool's objects, a client's snapshots.
    """

    from_: Address = Field(alias="from")
    destroy: StrictBool


# --- the whole inventory ---------------------------------------------------------------


class Inventory(FrozenModel):
    """The validated inventory: every table typed, profiles merged, paths resolved.

    Built only by :func:`costor.config.load_inventory` / ``check_inventory``, which also
    check cross-references. Secrets are references, never values.
    """

    path: Path  # the inventory file, absolute
    base_dir: Path  # its directory: relative paths in it are relative to this
    costor: CostorSettings
    sites: dict[str, SiteConfig] = {}
    pools: dict[str, PoolConfig] = {}
    clients: dict[str, ClientConfig] = {}
    policies: dict[str, PolicyConfig] = {}
    groups: dict[str, GroupConfig] = {}
    users: dict[str, UserConfig] = {}
    roles: dict[str, RoleConfig] = {}
    moved: tuple[MovedBlock, ...] = ()
    removed: tuple[RemovedBlock, ...] = ()
    # Findings that do not make the inventory invalid; not part of the digest.
    warnings: tuple[Diagnostic, ...] = Field(default=(), exclude=True)

    def canonical_json(self) -> str:
        """The resolved configuration as canonical JSON (sorted keys, no whitespace).

        Leaves out where the file is (``path``, ``base_dir``): what the configuration
        *says* is what matters, and the resolved paths in it already change if a moved
        file makes them point elsewhere. Contains no secret values, only references.
        """
        document = self.model_dump(
            mode="json", by_alias=True, exclude={"path", "base_dir", "warnings"}
        )
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def digest(self) -> str:
        """sha256 hex of :meth:`canonical_json`, for plan staleness checks."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def secret_refs(self) -> Iterator[tuple[KeyPath, SecretRef]]:
        """Every secret reference with its key path, e.g. ``("pools", "main", "passphrase")``."""
        for section in (
            "costor",
            "sites",
            "pools",
            "clients",
            "policies",
            "groups",
            "users",
            "roles",
        ):
            yield from iter_secret_refs(getattr(self, section), (section,))


# The names that moved to fields.py and access.py are re-exported: ``costor.config.model``
# stays the one import path of the inventory's model for ops, cli and plan.
__all__ = [
    "AVAILABLE_BACKENDS",
    "AVAILABLE_TRANSPORTS",
    "BUILTIN_ROLES",
    "LITERAL_SECRET_MESSAGE",
    "NAME_PATTERN",
    "PERMISSIONS",
    "RESOURCE_TABLES",
    "AbsoluteClientPath",
    "Address",
    "CheckPolicy",
    "ClientConfig",
    "Compression",
    "CostorSettings",
    "CronSchedule",
    "Duration",
    "GroupConfig",
    "Hooks",
    "Inventory",
    "MovedBlock",
    "NonEmptyStr",
    "NotifyPolicy",
    "Percentage",
    "Permission",
    "PolicyConfig",
    "PoolConfig",
    "PrunePolicy",
    "RateLimit",
    "RemovedBlock",
    "Retention",
    "RoleConfig",
    "SecretRef",
    "SelfTestPolicy",
    "SiteConfig",
    "SshOptions",
    "UserConfig",
    "duration_seconds",
    "iter_secret_refs",
    "name_problem",
    "percentage_fraction",
]
