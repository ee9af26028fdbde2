"""The one error tree of CoStor.

Every error a user can meet is a :class:`CostorError` subclass. Its docstring is the
message template (filled with the keyword arguments given when raised) and it carries
the process exit code and the HTTP status the server answers with. Only ``costor.cli``
turns errors into exit codes, and only the server (to come) turns them into HTTP
statuses; everything else raises.

HTTP statuses: 400 a request that cannot mean anything (usage, an ambiguous prefix), 404
a named thing that does not exist, 409 a state that refuses the request now (a lock, a
stale or blocked plan, the last key slot), 422 a configuration that does not validate,
502 a host that did not answer or answered wrongly, 503 storage that is unreachable,
throttling or not opened (a wrong passphrase: the server's configuration, not the
caller's), 507 storage that is full, 500 everything else (damage included).

Exit codes (a contract scripts rely on; README.md, docs/plan-apply.md): 0 ok, 1 error,
2 "changes present" (plan), 3 damage found, 4 "plan blocked" (``costor plan``: apply
would refuse the plan; :data:`PLAN_BLOCKED_EXIT`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class CostorError(Exception):
    """{message}"""

    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        if message is None:
            template = (self.__doc__ or "{message}").strip().splitlines()[0]
            try:
                message = template.format(**fields)
            except (KeyError, IndexError):
                message = template
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


# --- configuration -------------------------------------------------------------------


class ConfigError(CostorError):
    """Invalid configuration: {message}"""

    http_status = 422


class InventoryInvalid(ConfigError):
    """The inventory has {count} error(s)."""

    def __init__(self, diagnostics: list[Any]) -> None:
        self.diagnostics = diagnostics
        super().__init__(count=len(diagnostics))


class SecretUnavailable(ConfigError):
    """Secret for {key} is not available: {reason}"""


class UnknownResource(CostorError):
    """No {kind} named {name!r} in the inventory."""

    http_status = 404


class NotApplied(CostorError):
    """{address} is declared but not applied yet: run `costor plan` and `costor apply` (what runs is what was applied)."""

    http_status = 409


# --- the pool ------------------------------------------------------------------------


class PoolError(CostorError):
    """Pool error: {message}"""

    http_status = 503


class PoolNotFound(PoolError):
    """No CoStor pool at {location} (identity file missing); run `costor apply` to initialise it."""

    http_status = 503


class PoolExists(PoolError):
    """A pool already exists at {location}."""

    http_status = 409


class PoolMismatch(PoolError):
    """Pool at {location} has UUID {found}, but the state expects {expected}: foreign or replaced pool."""

    http_status = 503


class PoolFormatUnsupported(PoolError):
    """Pool at {location} uses format version {version}; this CoStor reads versions {supported}."""

    http_status = 503


class WrongPassphrase(PoolError):
    """Wrong passphrase for pool {location}: no key slot opens with it."""

    http_status = 503


class KeySlotNotFound(PoolError):
    """No key slot {slot!r} in pool {location}; `costor pool keys` lists them."""

    http_status = 404


class AmbiguousKeySlot(PoolError):
    """Key slot {slot!r} matches {count} slots of pool {location}; give more characters."""

    http_status = 400


class LastKeySlot(PoolError):
    """Refusing to remove key slot {slot}: it is the last key slot of pool {location}, and without one nothing opens the pool."""

    http_status = 409


class KeySlotInUse(PoolError):
    """Refusing to remove key slot {slot}: it is the only slot that pool {pool}'s configured passphrase opens. Set pools.{pool}.passphrase to another slot's passphrase first (then run this again), or pass --force to remove it anyway."""

    http_status = 409


class StorageFull(PoolError):
    """Pool storage is full while writing {name}: {reason}. Nothing was committed."""

    http_status = 507


class BackendError(PoolError):
    """Storage backend error on {name}: {reason}"""

    http_status = 503


class ObjectNotFound(BackendError):
    """Object {name} does not exist in the pool."""

    http_status = 404


class BackendTransient(BackendError):
    """Temporary storage failure on {name}: {reason}"""

    def __init__(
        self, message: str | None = None, *, retry_after: float | None = None, **fields: object
    ) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said


class BackendThrottled(BackendTransient):
    """Storage is throttling requests ({name}): {reason}"""


class WriteNotVerified(BackendError):
    """Write of {name} could not be verified after {attempts} attempt(s): {reason}"""

    http_status = 503


class DataCorruption(PoolError):
    """Damaged data in pack {pack}: {reason}"""

    exit_code = 3
    http_status = 500


class ObjectTruncated(BackendError, DataCorruption):
    """Damaged object {name}: it holds fewer bytes than were read from it ({got} of {length} at offset {offset}); it was truncated"""

    # Objects are immutable and their ranges come from the pool's own index: a short
    # read is damage (exit 3, as any other), not a failure of the storage to answer. A
    # BackendError still (what a backend raises), and a DataCorruption (what it means).
    exit_code = 3
    http_status = 500


class SnapshotNotFound(PoolError):
    """No snapshot matches {ref!r}."""

    http_status = 404


class AmbiguousSnapshot(PoolError):
    """Snapshot reference {ref!r} matches {count} snapshots; give more characters."""

    http_status = 400


class PathNotInSnapshot(PoolError):
    """Path {path!r} is not in snapshot {snapshot}."""

    http_status = 404


class DamageFound(CostorError):
    """Check found {count} problem(s) in pool {pool}."""

    exit_code = 3


# --- operations ----------------------------------------------------------------------


class BackupError(CostorError):
    """Backup of {client} failed: {reason}"""


class RestoreError(CostorError):
    """Restore failed: {reason}"""


class RestoreTargetNotDirectory(RestoreError):
    """Restore target {target} exists and is not a directory: name a directory (it is created if missing), or use --archive to write a file."""

    http_status = 400


class ArchiveExists(RestoreError):
    """{path} already exists: choose another name, or give --force to replace it."""

    http_status = 409


class UsageError(CostorError):
    """{message}"""

    http_status = 400


class StateError(CostorError):
    """State database error: {message}"""


class StateLocked(StateError):
    """The state is locked: {holder}. Wait for it (--lock-timeout) or, if that process is gone, run `costor force-unlock {lock_id}`."""

    http_status = 409


# --- plans ---------------------------------------------------------------------------


class PlanError(CostorError):
    """Plan error: {message}"""

    http_status = 409


class PlanFileInvalid(PlanError):
    """{path} is not a CoStor plan file: {reason}"""

    http_status = 400


class PlanStale(PlanError):
    """Saved plan {path} is stale: {reason}. Run `costor plan` again."""


class PlanForeign(PlanError):
    """Saved plan {path} was made against another state (lineage {plan_lineage}, this state is {state_lineage})."""


class PlanBlocked(PlanError):
    """Refusing to apply: {reason}"""


class ApplyCancelled(CostorError):
    """Apply cancelled."""


# ``costor plan`` exits with this when apply would refuse the plan (a blocked change, a
# plan error), whatever its flags: a blocked plan is never 0 (ok) or 2 (changes present).
PLAN_BLOCKED_EXIT = 4

# ``costor backup`` exits with this when the snapshot was stored but some files could
# not be read (each is named among the warnings; the snapshot holds the rest): a
# script must not take an incomplete backup for a complete one (restic exits 3 here;
# CoStor's 3 means damage).
BACKUP_INCOMPLETE_EXIT = 5


# ``costor --server URL`` exits with this when the site's TLS certificate is not the one
# pinned for it in the known-servers file (as ssh refuses a changed host key).
SERVER_CERTIFICATE_CHANGED_EXIT = 6


# --- remote hosts --------------------------------------------------------------------


class RemoteError(CostorError):
    """{host}: {reason}"""

    http_status = 502


class HostUnreachable(RemoteError):
    """Cannot connect to {host}: {reason}"""


class HostKeyUnknown(RemoteError):
    """No host key is recorded for client {client} ({host}): run `costor apply` while the host is reachable to record it, or pin it as ssh.host_key in the inventory."""


class HostKeyNotExpected(RemoteError):
    """{host} (client {client}) presents the host key {presented}, not {expected} as expected: nothing was recorded. Check the fingerprint on the host (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)."""


class HostKeyChanged(RemoteError):
    """The host key of {host} (client {client}) has changed: recorded {recorded}, presented {presented}. If the host was reinstalled, accept the new key with `costor hostkey accept {client}`; otherwise someone may be intercepting the connection."""


class HookFailed(BackupError):
    """Backup of {client} failed: {phase} hook `{command}` exited with {rc}: {stderr}"""


class PoolParametersTampered(PoolError):
    """Pool {location}: {reason}: refusing to open it. Restore costor-pool.json from a copy of the pool (`costor pool copy`) or a backup of that file; if it was changed on purpose, put back the values the pool was created with (docs/format.md, "Parameter tag")."""

    exit_code = 3
    http_status = 500


class KeySlotUnsafe(PoolError):
    """Pool {location}: key slot {slot} asks for {what}, over the cap of {cap}: it was not tried (damaged, or planted by someone who can write the storage), and no other key slot opens with this passphrase. Remove it with `costor pool remove-key`."""

    exit_code = 3
    http_status = 500


class RestoreRefused(RestoreError):
    """Refused {count} entr(ies) of snapshot {snapshot} that could leave the restore target or clash with an entry restored before them (first: {first}); the rest was {done}. The snapshot was made from a hostile or broken host: see docs/restore.md, "Restoring untrusted snapshots"."""

    http_status = 422


class HostProtocolError(RemoteError):
    """host {host} sent {what}: refused"""


class HostTimedOut(RemoteError):
    """host {host} sent nothing for {seconds} s: {doing} (it may be hung; raise ssh.io_timeout_s if it is only slow)"""


class SnapshotRolledBack(PoolError):
    """{ref} would be snapshot {found}, but the state records a newer one, {missing} ({time}), that no pool holds any more: its manifest was deleted outside CoStor, or the storage was rolled back. Restore {found} by its id if that is what you want; `costor check` reports the missing snapshot."""

    exit_code = 3
    http_status = 500


class KeySlotDamaged(WrongPassphrase):
    """No key slot of pool {location} opens with this passphrase, and key slot {slot} cannot be read ({reason}): it is damaged, or not a key slot. If it was this passphrase's slot, put it back from a copy of the pool, or open the pool with another passphrase and `costor pool add-key` a new slot."""

    exit_code = 3
    http_status = 500


class PackMissing(ObjectNotFound, DataCorruption):
    """Damaged pool: pack {name} is named by the pool's index but does not exist (deleted outside CoStor, or lost by the storage); `costor check` lists what it held"""

    # A missing pack the index names is damage (exit 3), like a truncated one: prune
    # never deletes a pack a segment still names (docs/format.md, "Write order").
    exit_code = 3
    http_status = 500


class ObjectDamaged(DataCorruption):
    """Damaged pool: {name}: {reason}; `costor check` says what it affects"""

    exit_code = 3
    http_status = 500


# --- the site server: tokens, requests (issue 20) -------------------------------------


class NotAuthenticated(CostorError):
    """Not authenticated: {reason}"""

    http_status = 401


class TokenRefused(CostorError):
    """No token created: {reason}"""

    http_status = 400


class TokenNotFound(CostorError):
    """No API token {token_id!r}."""

    http_status = 404


class JobNotFound(CostorError):
    """No job {job_id}."""

    http_status = 404


class PermissionDenied(CostorError):
    """Not allowed: {reason}"""

    # Only for what the caller may see: what it may not see is "not found" (404), as a
    # thing that does not exist would be, so that no answer tells that it exists.
    http_status = 403


class JobNotCancellable(CostorError):
    """Job {job_id} cannot be cancelled: {reason}"""

    http_status = 409


class LoginFailed(NotAuthenticated):
    """Login failed: wrong user name or password."""

    # One message for an unknown user and a wrong password: the answer (and the time it
    # takes) must not tell which user names exist.


class LoginThrottled(CostorError):
    """Too many failed logins {scope}: try again in {retry_after} s."""

    # The server answers with Retry-After; nothing is checked meanwhile.
    http_status = 429


class CsrfRefused(CostorError):
    """Refused: {reason}"""

    # A session cookie's request that changes something must carry the session's
    # X-CSRF-Token (a bearer token needs none: a browser never sends one by itself).
    http_status = 403


class ServerBusy(CostorError):
    """The server is busy: {reason}; try again in {retry_after} s."""

    # Answered at once with Retry-After, rather than queueing the request behind others.
    http_status = 503


class SessionNotFound(CostorError):
    """No login session {session_id!r}."""

    http_status = 404


# --- the audit log (issue 20) ---------------------------------------------------------


class AuditUnavailable(CostorError):
    """The audit log cannot be written, so {action} of {target} did not start: {reason}"""

    # Fail closed: an action that deletes data or reads backed-up content starts only
    # once its "started" record is written (docs/audit.md, "When the log cannot be
    # written").
    http_status = 503


# --- downloads from the site server (issue 20) ----------------------------------------


class NotARegularFile(RestoreError):
    """{path!r} in snapshot {snapshot} is a {type}, not a regular file: download a directory as an archive."""

    http_status = 400


class RangeNotSatisfiable(CostorError):
    """Range {range!r} cannot be satisfied: the file holds {size} bytes."""

    http_status = 416


# --- the Backup API: a pool's objects over HTTP (issue 20) ---------------------------


class ObjectNameRefused(CostorError):
    """{name!r} is not the name of a pool object: {reason}"""

    http_status = 400


class ObjectRefused(CostorError):
    """Object {name} refused: {reason}; nothing was stored."""

    # Bytes that do not hash to the name they were sent under: damaged in transit, or
    # not what the sender claims. Never stored, so nothing can plant a wrong object.
    http_status = 422


class ObjectExists(CostorError):
    """Object {name} already exists with other bytes: an object not named by its hash is written once; nothing was stored."""

    http_status = 409


class ObjectTooLarge(CostorError):
    """Object {name} refused: it is larger than {limit} bytes; nothing was stored."""

    http_status = 413


# --- the CLI against a remote site's API (costor --server URL, issue 20) --------------


class SiteServerError(CostorError):
    """{server}: {reason}"""

    http_status = 502


class ServerUnreachable(SiteServerError):
    """Cannot reach the site server {server}: {reason}"""


class ServerCertificateUntrusted(SiteServerError):
    """The TLS certificate of {server} is not trusted: {reason}"""


class ServerCertificateChanged(SiteServerError):
    """The TLS certificate of {server} has changed: line {line} of {file} pins {recorded}, the server presents {presented}. Someone may be intercepting the connection; if the site's certificate was replaced, check the new fingerprint with the site's administrator, delete line {line} of {file}, and run the command again to pin it."""

    exit_code = SERVER_CERTIFICATE_CHANGED_EXIT


class KnownServersInvalid(SiteServerError):
    """{file} line {line}: {reason}"""


class RemoteApiError(SiteServerError):
    """{server} answered {status} {error}: {detail}"""
