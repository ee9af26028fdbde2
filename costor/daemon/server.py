"""``costor serve``: the site daemon. One process runs the scheduler and supervises up to
N workers; each job runs in a child process, so a job that crashes or is killed takes
nothing else with it and its memory is returned.

A child is forked from the daemon, which imported the job code and derived each pool's
key at start: a job so starts in milliseconds, not the ~1 s a new ``costor jobs run ID``
process pays in imports and argon2id (docs/benchmarks-ssh.md). The child is what that
command would be: a session of its own, stdout and stderr to the job's log, the
applied configuration read afresh from the state, database connections of its own.

Every tick the daemon: beats its heartbeat, interrupts jobs that stopped beating
(their process died; a retry is queued), queues the runs that are due, reaps finished
children, and claims new jobs while it has free workers — unless the job's site is in
maintenance, or the daemon is stopping.

SIGTERM / SIGINT: no new jobs; running ones get ``grace`` seconds to finish, then are
sent SIGTERM, which records them as interrupted and queues their retry. kill -9 of the
daemon leaves its children running to the end (they record their own outcome); jobs
whose process died are found by the next daemon's ``recover``.

The HTTP API (``costor/server``, when a listen address is given) is served on a thread
of this process (:class:`costor.server.listen.HttpServer`), with a context of its own;
it starts after the instance is registered and stops with the scheduler. A job is
forked while the API's gate is held (no request is using the database then, and on
SQLite the API holds no connection: ``costor/server/gate.py``); the child runs only the
job, on the thread that forked it.

Several daemons may share one PostgreSQL database (jobs are claimed with SKIP LOCKED,
schedules advanced by compare-and-set); on SQLite a second one is refused.
"""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Collection
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

# What a job imports (lazily, for the CLI's start-up), imported here once so that forked
# jobs start at once: an incremental pull forked without these spent ~30 ms importing
# (pyfastcdc most).
import pyfastcdc  # noqa: F401  (imported for the forked jobs)
from cryptography.hazmat.primitives.kdf import hkdf  # noqa: F401  (for the forked jobs)

import costor.ops.backup.digest_index  # noqa: F401  (imported for the forked jobs)
import costor.ops.backup.host  # noqa: F401  (imported for the forked jobs)
import costor.ops.backup.pull  # noqa: F401  (imported for the forked jobs)
import costor.ops.backup.run  # noqa: F401  (imported for the forked jobs)
import costor.ops.maintenance.check  # noqa: F401  (imported for the forked jobs)
import costor.ops.maintenance.forget  # noqa: F401  (imported for the forked jobs)
import costor.ops.maintenance.prune  # noqa: F401  (imported for the forked jobs)
import costor.ops.maintenance.selftest  # noqa: F401  (imported for the forked jobs)
import costor.store.backup.stream  # noqa: F401  (imported for the forked jobs)
import costor.store.backup.walk  # noqa: F401  (imported for the forked jobs)
import costor.transport.helper  # noqa: F401  (imported for the forked jobs)
import costor.transport.ssh
from costor.db import instances
from costor.db import queue as jobs
from costor.db.models import JobRow
from costor.errors import CostorError
from costor.ops.context import Context
from costor.ops.jobs.runner import after_job, run_job
from costor.ops.maintenance.site import maintenance_sites
from costor.util import hashthreads
from costor.util.log import get_logger

if TYPE_CHECKING:
    from costor.server.listen import HttpServer

logger = get_logger("serve")  # the daemon's stderr (a forked job's: its log file)


class ServeRunning(CostorError):
    """Another `costor serve` ({holder}) already uses the SQLite state {path}; run one per SQLite state, or use PostgreSQL to run several."""


class Forked:
    """A forked job process, watched like a :class:`subprocess.Popen`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class Child:
    job_id: int
    process: Forked
    log: IO[bytes]
    started: float = field(default_factory=time.monotonic)
    terminated: bool = False
    cancelled_at: float | None = None  # when it was asked to stop, its job cancelled


class Server:
    def __init__(
        self,
        ctx: Context,
        *,
        workers: int = 2,
        sites: Collection[str] | None = None,
        tick: float = 1.0,
        grace: float = 60.0,
        once: bool = False,
        retry_delay: float = 30.0,
        http: HttpServer | None = None,
    ) -> None:
        self.ctx = ctx
        self.http = http
        ctx.keep_indexes = True  # loaded at start, refreshed after each job (_preload)
        # Its forked jobs must not inherit a started BLAKE3 thread pool (they would hang).
        hashthreads.keep_fork_safe()
        self.workers = max(1, workers)
        self.sites = set(sites) if sites else None
        self.tick = tick
        self.grace = grace
        self.once = once
        self.retry_delay = retry_delay
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.children: dict[int, Child] = {}
        self.stopping = False
        self.stop_requested_at: float | None = None
        self._lock_file: IO[str] | None = None
        self._last_beat = 0.0
        self._claimed = False
        self._served_pools: list[str] = []  # opened at start: their indexes are kept
        self._reported: set[str] = set()  # inventory findings logged (each once)

    # --- lifecycle --------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped (SIGTERM, SIGINT; with ``once``, when nothing is left to
        run)."""
        self._single_instance()
        self._register()
        try:
            if self.http is not None:
                self.http.start()
        except BaseException:
            self._unregister()
            raise
        previous = {
            sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        logger.info(f"costor serve {self.id}: {self.workers} worker(s)")
        self._reload_inventory()  # logs what is wrong with the working inventory at once
        self._preload()
        try:
            while True:
                try:
                    self.step()
                except Exception as error:  # noqa: BLE001  (a daemon outlives a bad tick)
                    # A database hiccup (a dropped connection, a lock timeout) must not end
                    # the daemon: the next tick tries again; the jobs are in the database.
                    logger.warning(f"costor serve: tick failed, retrying: {error!r}")
                    time.sleep(min(5.0, max(self.tick, 1.0)))
                    continue
                if self.stopping and not self.children:
                    break
                if self.once and not self.children and not self._claimed:
                    break  # nothing running, and nothing could be started this tick
                time.sleep(self.tick)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.http is not None:
                self.http.stop()
            self._unregister()
        logger.info(f"costor serve {self.id}: stopped")

    def _request_stop(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            logger.info(
                f"costor serve: {signal.Signals(signum).name}: starting no new jobs, "
                f"waiting up to {self.grace:.0f} s for {len(self.children)} running"
            )
        self.stopping = True
        self.stop_requested_at = self.stop_requested_at or time.monotonic()

    def step(self) -> None:
        engine = self.ctx.engine
        now = time.monotonic()
        if now - self._last_beat >= jobs.HEARTBEAT_EVERY:
            self._heartbeat()
            self._reload_inventory()
            for job_id in jobs.recover(engine, retry_delay=self.retry_delay):
                logger.warning(f"job {job_id}: its process stopped; interrupted, retry queued")
            self._last_beat = now
        if not self.stopping:
            for job_id in jobs.enqueue_due(engine):
                logger.info(f"job {job_id}: queued by its schedule")
        self._reap()
        self._stop_cancelled()
        if self.stopping:
            self._stop_children()
            return
        paused = self.paused_sites()
        self._claimed = False
        while len(self.children) < self.workers:
            job = jobs.claim(engine, self.id, sites=self.sites, paused_sites=paused)
            if job is None:
                break
            self._spawn(job)
            self._claimed = True

    def _reload_inventory(self) -> None:
        """Follow applies: the applied configuration (what jobs run, the sites'
        ``maintenance``, notify settings) is read from the state again. The working
        inventory is only watched: each of its errors, and each resource with changes
        not applied yet, is logged once (and again only if it comes back after a fix);
        a broken file never stops the site from running what was applied."""
        try:
            self.ctx.reload()
        except CostorError as error:
            self._report_once([f"costor serve: the configuration was not reloaded: {error}"])
            return
        path = self.ctx.inventory_path
        notes = [
            f"costor serve: {path} does not validate; running the applied configuration: {problem}"
            for problem in self.ctx.working_problems
        ]
        notes += [
            f"costor serve: {address} has unapplied changes ({change}) in {path}; jobs run "
            "it as applied until `costor apply`"
            for address, change in self.ctx.unapplied_changes().items()
        ]
        self._report_once(notes)

    def _report_once(self, notes: list[str]) -> None:
        for note in notes:
            if note not in self._reported:
                logger.warning(note)
        self._reported = set(notes)

    # --- children ---------------------------------------------------------------------

    def _preload(self) -> None:
        """Import what jobs run, derive each served pool's key and load its index, once,
        so that forked jobs start at once (a job reads only the index segments written
        since: store/index.py ``IndexCache``). A pool that cannot be opened now is
        opened by its jobs. (What a job imports is imported with this module, at the
        top: see there.)"""
        costor.transport.ssh.compressed_helper()

        for name, pool in sorted(self.ctx.inventory.pools.items()):
            if self.sites is not None and pool.site not in self.sites:
                continue
            try:
                self.ctx.open_pool(name, load_index=True)
            except Exception as error:  # noqa: BLE001  (its jobs open it and report)
                logger.warning(f"costor serve: pool {name} not opened at start: {error}")
            else:
                self._served_pools.append(name)

    def _refresh_indexes(self) -> None:
        """After a job: the segments it wrote, into the kept indexes (a few ms; the next
        job forked reads fewer)."""
        for name in self._served_pools:
            try:
                pool = self.ctx.open_pool(name, load_index=False)
                cache = self.ctx.index_cache(pool.uuid)
                if cache is not None:
                    pool.refresh_index_cache(cache)
            except Exception as error:  # noqa: BLE001  (its jobs load what they need)
                logger.warning(f"costor serve: the index of pool {name} not refreshed: {error}")

    def _spawn(self, job: JobRow) -> None:
        assert job.id is not None  # a claimed job is stored
        logs = Path(self.ctx.settings.state_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / f"job-{job.id}.log", "ab")  # noqa: SIM115  (closed when reaped)
        process = self._fork(job.id, log)
        self.children[job.id] = Child(job.id, process, log)
        logger.info(f"job {job.id}: {job.kind} {job.target} started (pid {process.pid})")

    def _fork(self, job_id: int, log: IO[bytes]) -> Forked:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child writes the daemon's buffered output again
        if self.ctx.database_url.startswith("sqlite"):
            # No SQLite connection stays open across fork (SQLite's own rule, "How To
            # Corrupt An SQLite Database File" §2.6). Its locks are POSIX locks, owned by a
            # process and not inherited, but its account of them is memory that fork
            # copies: a child that opens the database reuses that account, believes it
            # holds locks it does not, and a daemon started after this one died takes
            # the database for idle and resets its WAL under the child. A job's
            # heartbeats and outcome were lost that way (tests/cli/test_daemon.py, the
            # job that outlives its daemon). Reopening costs the daemon a millisecond.
            self.ctx.engine.dispose()
        # Signals wait until the child has its own handlers (the daemon's would only set
        # a stop flag in the child's copy of it).
        stops = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        # The child's collector leaves what it inherits alone (gc.freeze, as Python's
        # docs advise for fork without exec): else each collection in the job walks the
        # daemon's objects (the kept indexes, the modules), and copies every page it
        # touches (copy-on-write). The daemon collects its own again at once.
        gc.freeze()
        try:
            with self.http.gate.paused() if self.http is not None else nullcontext():
                pid = os.fork()
        except BaseException:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            raise
        if pid:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            return Forked(pid)
        code = 70
        try:
            for sig in stops:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            os.setsid()
            # Not the daemon's: its SQLite lock (a new daemon may start while this job
            # runs on) and the other jobs' logs.
            for inherited in [self._lock_file, *(c.log for c in self.children.values())]:
                if inherited is not None:
                    inherited.close()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            os.environ["COSTOR_JOB_RETRY_DELAY"] = str(self.retry_delay)
            code = run_forked_job(self.ctx, job_id)
        except BaseException:  # noqa: BLE001  (the child never returns into the daemon)
            logger.error(traceback.format_exc().rstrip("\n"))  # as traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001, S110  (exiting anyway)
                    pass
            os._exit(code)

    def _reap(self) -> None:
        ended = False
        for job_id, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self.children[job_id]
            child.log.close()
            row = jobs.get_job(self.ctx.engine, job_id)
            if row is not None and row.state == "running":
                # The child died without recording an outcome (killed, crashed).
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                finished = jobs.finish(
                    self.ctx.engine,
                    job_id,
                    "interrupted",
                    error=f"its worker process stopped ({how}) before the job finished",
                    retry_delay=self.retry_delay,
                )
                logger.warning(f"job {job_id}: worker stopped ({how}); interrupted, retry queued")
                if finished is not None and finished.state == "failed":
                    after_job(self.ctx, finished)
            elif row is not None:
                logger.info(f"job {job_id}: {row.kind} {row.target} {row.state}")
            ended = True
        if ended:
            self._refresh_indexes()

    def _stop_cancelled(self) -> None:
        """Stop the children whose job was cancelled (``costor jobs cancel``, the API:
        costor/ops/jobs/requests.py ``cancel_job``): SIGTERM, then SIGKILL if one is
        still there after the grace. The job stays ``cancelled``: its own outcome finds
        it no longer running and is not recorded (no retry is queued)."""
        for child in self.children.values():
            if child.cancelled_at is not None:
                if time.monotonic() - child.cancelled_at > self.grace:
                    child.process.kill()
                continue
            row = jobs.get_job(self.ctx.engine, child.job_id)
            if row is not None and row.state == "cancelled":
                logger.info(f"job {child.job_id}: cancelled; stopping its process")
                child.process.send_signal(signal.SIGTERM)
                child.cancelled_at = time.monotonic()

    def _stop_children(self) -> None:
        assert self.stop_requested_at is not None
        waited = time.monotonic() - self.stop_requested_at
        if waited < self.grace:
            return
        for child in self.children.values():
            if not child.terminated:
                child.process.send_signal(signal.SIGTERM)  # recorded as interrupted
                child.terminated = True
            elif waited > self.grace + 30:
                child.process.kill()

    # --- maintenance, instances ----------------------------------------------------------

    def paused_sites(self) -> set[str]:
        return maintenance_sites(self.ctx)

    def _single_instance(self) -> None:
        url = self.ctx.database_url
        if not url.startswith("sqlite:///"):
            return
        path = url.removeprefix("sqlite:///")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handle = open(f"{path}.serve.lock", "a+")  # noqa: SIM115  (held for the lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ServeRunning(holder=holder, path=path) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._lock_file = handle

    def _register(self) -> None:
        instances.register(self.ctx.engine, self.id, hostname=socket.gethostname(), pid=os.getpid())

    def _heartbeat(self) -> None:
        instances.heartbeat(self.ctx.engine, self.id, stopping=self.stopping)

    def _unregister(self) -> None:
        try:
            instances.unregister(self.ctx.engine, self.id)
        finally:
            if self._lock_file is not None:
                self._lock_file.close()


def run_forked_job(ctx: Context, job_id: int) -> int:
    """In a child forked from the daemon: run job ``job_id`` as ``costor jobs run ID``
    would (same exit codes), with the daemon's imports and pool keys."""
    # The daemon's pooled connections are its own: dropped here unclosed (closing them
    # would end the daemon's sessions), and new ones made (SQLAlchemy's advice for fork).
    ctx.engine.dispose(close=False)
    try:
        ctx.reload()  # what was applied last, even if it was applied a moment ago
        return run_job(ctx, job_id)
    except CostorError as error:
        logger.error(f"costor: {error}")
        return error.exit_code
