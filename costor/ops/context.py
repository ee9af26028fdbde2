"""The context of one command: the loaded inventory, the state database (opened on
first use) and the pools it names."""

from __future__ import annotations

import getpass
import json
import os
import socket
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from costor.config import load_inventory, resolve_secret
from costor.config.applied import applied_inventory, load_settings
from costor.config.model import RESOURCE_TABLES
from costor.db.clients import client_rows
from costor.db.models import ClientRow, PackRow, PoolRow, SnapshotRow
from costor.db.pools import add_pool_bytes
from costor.db.session import Engine, open_engine, session_scope
from costor.db.state import resource_rows_as_stored
from costor.errors import (
    CostorError,
    InventoryInvalid,
    NotApplied,
    PoolError,
    PoolMismatch,
    UnknownResource,
    WrongPassphrase,
)
from costor.plan.resources import canonical, desired_resources
from costor.store.backends.filters import StorageFilters
from costor.store.backends.registry import BackendSettings, open_backend
from costor.store.index import IndexCache
from costor.store.pool import Pool, read_identity

if TYPE_CHECKING:
    from costor.config.diagnostics import Diagnostic
    from costor.config.model import (
        ClientConfig,
        CostorSettings,
        Inventory,
        PoolConfig,
        SecretRef,
    )
    from costor.store.backends.base import Backend
    from costor.store.snapshot import Snapshot


def os_actor() -> str:
    """``os:USER@HOST``: the actor of a command run from a shell."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    return f"os:{user}@{socket.gethostname()}"


class Context:
    def __init__(
        self,
        inventory_path: str | Path,
        *,
        resolve_secrets: bool = False,
        keep_indexes: bool = False,
        configuration: Literal["applied", "working"] = "applied",
    ) -> None:
        """``configuration``: what this command runs. ``"applied"`` (every verb but
        plan and apply): the clients, pools, policies and sites that ``costor apply``
        recorded in the state, read on first use; the working inventory on disk is only
        compared with it (:meth:`unapplied_changes`) and may even be broken
        (:attr:`working_problems`). ``"working"`` (plan, apply): the inventory on disk,
        which must validate.
        ``resolve_secrets``: also check that every secret can be read (plan, apply),
        so a missing variable is a diagnostic naming file, line and key.
        ``keep_indexes``: a long-lived process (``costor serve``) keeps each pool's
        loaded index segments between backups (``costor/store/index.py``
        ``IndexCache``); a one-shot command does not pay for the copy."""
        self.inventory_path = Path(inventory_path)
        self.configuration = configuration
        self.resolve_secrets = resolve_secrets
        self.working: Inventory | None = None
        self.working_problems: list[Diagnostic] = []  # why the working inventory is broken
        self._inventory: Inventory | None = None
        self._applied: dict[str, str] | None = None  # address -> canonical applied JSON
        self._unapplied: dict[str, str] | None = None  # unapplied_changes(), until reload
        if configuration == "working":
            self.working = load_inventory(inventory_path, resolve_secrets=resolve_secrets)
            self._inventory = self.working
            self.settings: CostorSettings = self.working.costor
        else:
            self.settings = self._read_working()
        # Master keys of the pools opened by this process, by (pool name, UUID): a
        # process that backs up many clients (backup --all, the scheduler) derives each
        # pool's key once (~0.2 s of argon2id), not once per backup.
        self._masters: dict[tuple[str, str], Any] = {}
        self._manifests: dict[str, dict[str, Any]] = {}  # pool UUID -> manifests read
        self.keep_indexes = keep_indexes
        self._index_caches: dict[str, IndexCache] = {}  # by pool UUID
        # Who runs this command, as the audit log names them (costor.ops.audit): the OS
        # user here; the daemon's jobs set "system", the server "user:NAME" or
        # "token:ID", the caller's address as the source and its request's id.
        self.actor: str = os_actor()
        self.source: str | None = "cli"
        self.request_id: str | None = f"cli-{uuid.uuid4().hex[:12]}"  # this command's records

    # --- applied and working configuration ---------------------------------------------

    @property
    def inventory(self) -> Inventory:
        """What runs: the applied configuration (or, for plan and apply, the working
        inventory). Read from the state on first use."""
        if self._inventory is None:
            self._inventory = self.read_applied()
        return self._inventory

    @inventory.setter
    def inventory(self, value: Inventory) -> None:
        self._inventory = value

    def reload(self) -> None:
        """Read the working inventory and the applied configuration again (a
        long-lived process follows applies, and notices edits made since)."""
        if self.configuration == "working":
            self.working = load_inventory(self.inventory_path, resolve_secrets=self.resolve_secrets)
            self._inventory = self.working
            return
        self.settings = self._read_working()
        self._inventory = self.read_applied()

    def _read_working(self) -> CostorSettings:
        """Load the working inventory for comparison; a broken one is kept as its
        diagnostics, and ``[costor]`` is then read from it alone."""
        self._unapplied = None
        try:
            self.working = load_inventory(self.inventory_path)
            self.working_problems = []
            return self.working.costor
        except InventoryInvalid as error:
            self.working = None
            self.working_problems = list(error.diagnostics)
            return load_settings(self.inventory_path)

    def read_applied(self) -> Inventory:
        """The applied configuration, read from the state now (whatever this context
        runs): apply derives the schedules from it once it has recorded its changes."""
        with session_scope(self.engine, write=False) as session:
            rows = [
                (row.address, row.type, row.name, row.applied)
                for row in resource_rows_as_stored(session)
            ]
        self._applied = {address: applied for address, _t, _n, applied in rows}
        self._unapplied = None
        return applied_inventory(
            path=Path(os.path.abspath(self.inventory_path)),
            base_dir=Path(os.path.abspath(self.inventory_path)).parent,
            settings=self.settings,
            resources=[(kind, name, json.loads(applied)) for _a, kind, name, applied in rows],
        )

    def unapplied_changes(self) -> dict[str, str]:
        """Resources whose working inventory differs from what was applied, address ->
        ``"added"`` (declared, never applied), ``"changed"`` or ``"removed"`` (applied,
        no longer declared). Empty when the working inventory is broken: that is
        :attr:`working_problems`."""
        if self.working is None:
            return {}
        self.inventory  # noqa: B018  (reads the applied rows)
        if self._unapplied is not None:  # a job asks twice (its log, its outcome)
            return dict(self._unapplied)
        applied = self._applied or {}
        declared = {r.address: canonical(r.attributes) for r in desired_resources(self.working)}
        changes = {a: "added" for a in declared if a not in applied}
        changes |= {a: "removed" for a in applied if a not in declared}
        changes |= {a: "changed" for a in declared if a in applied and applied[a] != declared[a]}
        self._unapplied = dict(sorted(changes.items()))
        return dict(self._unapplied)

    def drift_notice(self, address: str, *, broken: bool = True) -> str | None:
        """One line for a job's output when ``address`` runs as applied although the
        working inventory says otherwise (or, with ``broken``, cannot be read)."""
        if self.configuration == "working":
            return None
        if self.working_problems and broken:
            return (
                f"{self.inventory_path} has {len(self.working_problems)} error(s) "
                "(`costor validate` shows them); running the applied configuration"
            )
        change = self.unapplied_changes().get(address)
        if change is None:
            return None
        what = {"changed": "changes", "added": "is not applied yet", "removed": "removal"}
        if change == "added":
            return (
                f"{address} is declared but not applied yet: run `costor plan` and `costor apply`"
            )
        return (
            f"{address} has unapplied {what[change]} in {self.inventory_path}; running it as "
            "applied (`costor plan` shows the difference)"
        )

    # --- configuration --------------------------------------------------------------

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    def pool_config(self, name: str) -> PoolConfig:
        try:
            return self.inventory.pools[name]
        except KeyError:
            raise self._unknown("pool", name) from None

    def client_config(self, name: str) -> ClientConfig:
        try:
            return self.inventory.clients[name]
        except KeyError:
            raise self._unknown("client", name) from None

    def _unknown(self, kind: str, name: str) -> CostorError:
        declared = getattr(self.working, RESOURCE_TABLES[kind], {}) if self.working else {}
        if self.configuration == "applied" and name in declared:
            return NotApplied(address=f"{kind}.{name}")
        return UnknownResource(kind=kind, name=name)

    def pool_names(self, only: str | None = None) -> list[str]:
        if only is not None:
            self.pool_config(only)
            return [only]
        return sorted(self.inventory.pools)

    # --- state ------------------------------------------------------------------------

    @cached_property
    def engine(self) -> Engine:
        private_directory(Path(self.settings.state_dir))
        return open_engine(self.database_url)

    def client_names(self, name: str) -> list[str]:
        """The client's name and the names it had before (``[[moved]]``), newest first:
        its snapshots carry the name it had when each was taken."""
        with session_scope(self.engine, write=False) as session:
            row = session.get(ClientRow, name)
            return [name, *reversed(json.loads(row.former_names))] if row else [name]

    def client_pool(self, name: str) -> str:
        """A declared client's pool, or a retired one's (its snapshots stay listable)."""
        if name in self.inventory.clients:
            return self.inventory.clients[name].pool
        with session_scope(self.engine, write=False) as session:
            row = session.get(ClientRow, name)
        if row is None:
            raise UnknownResource(kind="client", name=name)
        return row.pool

    def current_client_names(self) -> dict[str, str]:
        """Former name -> current name, for every renamed client."""
        with session_scope(self.engine, write=False) as session:
            rows = client_rows(session)
        return {old: row.name for row in rows for old in json.loads(row.former_names)}

    def recorded_pool_uuid(self, name: str) -> str | None:
        with session_scope(self.engine, write=False) as session:
            row = session.get(PoolRow, name)
            return row.uuid if row else None

    # --- pools ------------------------------------------------------------------------

    def backend(self, name: str) -> Backend:
        """The pool's storage, wrapped in the filters its inventory entry asks for."""
        return self.backend_for(self.pool_config(name))

    def backend_for(self, config: PoolConfig) -> Backend:
        """The storage of a pool configuration (declared, or as recorded at its last apply)."""
        return open_backend(self.backend_settings(config))

    def backend_settings(self, config: PoolConfig) -> BackendSettings:
        """What the backend registry needs of a pool configuration: its location, its
        credentials (secrets resolved now) and the storage filters it asks for."""
        name = config.name
        rate = config.rate_limit
        filters = StorageFilters(
            verify_writes=config.verify_writes,
            verify_delay=config.verify_delay_s,
            rate_limit=(rate.requests, float(rate.per_seconds)) if rate else None,
            retry=config.backend == "s3",
        )
        staging = Path(self.settings.state_dir) / "staging" / name if config.staging else None
        if config.backend == "s3":
            assert config.bucket is not None  # the model requires it for s3
            return BackendSettings(
                scheme="s3",
                bucket=config.bucket,
                prefix=config.prefix or "",
                endpoint=config.endpoint,
                region=config.region,
                access_key=self._secret(config.access_key, f"pools.{name}.access_key"),
                secret_key=self._secret(config.secret_key, f"pools.{name}.secret_key"),
                path_style=config.path_style,
                filters=filters,
                staging=staging,
            )
        if config.path is not None:
            return BackendSettings(
                scheme="file", path=config.path, filters=filters, staging=staging
            )
        raise PoolError(message=f"pool {name}: backend {config.backend!r} has no location")

    def _secret(self, ref: SecretRef | None, key: str) -> str | None:
        if ref is None:
            return None
        return resolve_secret(ref, key)

    def passphrase(self, name: str) -> str | None:
        return self.passphrase_for(self.pool_config(name))

    def passphrase_for(self, config: PoolConfig) -> str | None:
        return self._secret(config.passphrase, f"pools.{config.name}.passphrase")

    def open_pool(self, name: str, *, load_index: bool = True) -> Pool:
        """Open a declared pool; its UUID must match the one recorded at apply.

        The state database is read on a second thread while the key is derived: the
        two are the largest start-up costs of every command (~0.3 s of imports and
        ~0.2 s of argon2id, which releases the GIL), and overlapping them saves ~0.15 s.
        """
        backend = self.backend(name)
        cached = self._cached_pool(name, backend)
        if cached is not None:
            self._configure(name, cached)
            if load_index:
                self.load_index(cached)
            return cached
        passphrase = self.passphrase(name)
        wrong: WrongPassphrase | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="state") as executor:
            recorded = executor.submit(self.recorded_pool_uuid, name)
            try:
                pool: Pool | None = Pool.open(backend, passphrase)
            except WrongPassphrase as error:
                pool, wrong = None, error
            expected = recorded.result()
        found = pool.uuid if pool is not None else read_identity(backend).uuid
        if expected is not None and found != expected:
            raise PoolMismatch(location=backend.location, found=found, expected=expected)
        if pool is None:
            assert wrong is not None
            raise wrong
        self._masters[(name, pool.uuid)] = pool.master
        self._configure(name, pool)
        if load_index:
            self.load_index(pool)
        return pool

    def load_index(self, pool: Pool) -> None:
        """The pool's index, from the segments this process kept where it keeps them."""
        pool.load_index(self.index_cache(pool.uuid))

    def index_cache(self, uuid: str) -> IndexCache | None:
        if not self.keep_indexes:
            return None
        return self._index_caches.setdefault(uuid, IndexCache())

    def _cached_pool(self, name: str, backend: Backend) -> Pool | None:
        """The pool, opened with the key this process already derived for it (same name,
        same UUID at the location, and the UUID the state recorded)."""
        if not any(key[0] == name for key in self._masters):
            return None
        identity = read_identity(backend)
        master = self._masters.get((name, identity.uuid))
        if master is None:
            return None
        expected = self.recorded_pool_uuid(name)
        if expected is not None and identity.uuid != expected:
            raise PoolMismatch(location=backend.location, found=identity.uuid, expected=expected)
        return Pool(backend, identity, master)

    def _configure(self, name: str, pool: Pool) -> None:
        # Every Pool object this context opens for one pool shares the manifests read.
        pool.manifests = self._manifests.setdefault(pool.uuid, pool.manifests)
        config = self.pool_config(name)
        pool.configure_writes(
            compression_level=config.compression.level
            if config.compression.algorithm == "zstd"
            else None,
            pack_size=config.pack_size_mib * 1024 * 1024,
        )

    # --- catalogue --------------------------------------------------------------------

    def record_snapshot(self, pool: Pool, snapshot: Snapshot, packs: dict[str, int]) -> None:
        counters = snapshot.counters
        with session_scope(self.engine) as session:
            session.merge(snapshot_row(pool.uuid, snapshot))
            add_pool_bytes(
                session,
                pool.uuid,
                raw=counters.get("bytes_added_raw", 0),
                stored=counters.get("bytes_added", 0),
            )
            for pack_id, size in packs.items():
                session.merge(PackRow(pool_uuid=pool.uuid, pack_id=pack_id, size=size))


def private_directory(path: Path) -> None:
    """The state directory holds the database (with the plan-signing key), host keys'
    caches and job logs: only its owner may enter it (0700). Made so when new; an
    existing one this user owns is tightened (an installation from before this rule)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = path.stat()
    if status.st_uid == os.getuid() and status.st_mode & 0o077:
        path.chmod(stat.S_IMODE(status.st_mode) & 0o700)


def snapshot_row(pool_uuid: str, snapshot: Snapshot) -> SnapshotRow:
    return SnapshotRow(
        id=snapshot.id,
        pool_uuid=pool_uuid,
        client=snapshot.client,
        time=snapshot.time,
        tree=snapshot.tree,
        paths=json.dumps(snapshot.paths),
        counters=json.dumps(snapshot.counters, sort_keys=True),
        duration_s=snapshot.duration_s,
    )
