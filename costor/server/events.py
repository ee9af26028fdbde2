"""A job, live: its progress, its log lines and its state as server-sent events.

**The contract** (for ``GET /api/v1/jobs/{id}/events`` and the web UI's pages, which
call :func:`watch_job` and render each event as they like):

- :func:`watch_job` yields :class:`JobEvent` s for one job, in this order: the log lines
  numbered after ``after`` that are already stored, the job's state and its progress
  (if it reported any), then, as they happen: each new log line once (``"log"``:
  ``{"seq", "time", "level", "text"}``), each new progress document (``"progress"``:
  costor.ops.jobs.progress, only when it changed), each change of state (``"state"``:
  ``{"id", "state", "error", "ended", "last_seq", "started_at", "finished_at",
  "duration_s"}``). The last event is a ``"state"`` with ``ended`` true, after every
  line the job logged (its outcome and report included); then the iteration ends. A job
  that already ended gives its lines, its last progress and that one state.
- Every event's ``id`` is the number of the last log line delivered with or before it,
  so a client that reconnects with ``Last-Event-ID: N`` (or ``after=N``) gets the
  lines after N and no line twice.
- :func:`watch_job` checks no permission: the caller has (the route below: ``jobs.read``
  on the job's client, 404 for a job the caller does not see, as ``GET
  /api/v1/jobs/{id}``). It raises :class:`JobNotFound` for a job that does not exist.
- A watcher that falls behind by :data:`QUEUE_LIMIT` events (a stalled client) is
  dropped: its stream ends, and the client reconnects with its ``Last-Event-ID``.

**Why one poller per job, shared** (:class:`WatcherHub`): jobs run in their own
processes (``costor jobs run ID``), possibly under another ``costor serve``; the state
database is the only place to see them, so watching is polling it. One asyncio task per
watched job reads the job's row and its new log lines every :data:`POLL_EVERY` seconds
(in a worker thread, through the gate: costor/server/gate.py, never on the event loop)
and hands the events to every watcher's queue: 50 watchers of one job cost one read per
half second, as one does. The poller stops when the last watcher leaves, or after the
job ended and its watchers were told.

**Why the SSE stream pings** every :data:`PING_EVERY` seconds (a comment line; the
environment's ``COSTOR_EVENTS_PING_S`` sets another period): proxies close a connection
silent for a minute or so, and a ping written to a client that went
away is how the server notices (sse-starlette then cancels the stream, and its watcher
leaves the hub).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi import Path as InPath
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent

from costor.db import joblogs
from costor.db import queue as jobs
from costor.errors import JobNotFound, UsageError
from costor.ops.jobs.logs import MAX_SEQ, RUNNING
from costor.server import documents
from costor.server.gate import Gate
from costor.server.permissions import Access, requires, still_authenticated, use
from costor.server.schemas import error_responses

logger = logging.getLogger("costor.server")

API = "/api/v1"
POLL_EVERY = 0.5  # seconds between a watched job's reads of the state (the issue: ~0.5 s)
PING_EVERY = 15.0  # seconds between heartbeat comments (COSTOR_EVENTS_PING_S overrides)
RECHECK_EVERY = 30.0  # seconds between checks that a stream's credential still holds
QUEUE_LIMIT = 10_000  # events a watcher may fall behind before it is dropped
READ_LIMIT = joblogs.MAX_READ  # log lines per read (more: read again at once)

EventKind = Literal["progress", "log", "state"]


@dataclass(frozen=True)
class JobEvent:
    """One event of a watched job: ``kind``, its JSON ``data``, and ``id`` (the number of
    the last log line delivered so far, for ``Last-Event-ID``)."""

    kind: EventKind
    data: dict[str, Any]
    id: str

    def sse(self) -> ServerSentEvent:
        return ServerSentEvent(
            data=json.dumps(self.data, separators=(",", ":")), event=self.kind, id=self.id
        )


@dataclass(frozen=True)
class Reading:
    """What one read of the state found: the job's state document (``last_seq``: the
    number of the last line it logged), its progress (None: none), and its log lines
    after the reader's cursor."""

    state: dict[str, Any]
    progress: dict[str, Any] | None
    lines: list[dict[str, Any]]
    more: bool  # lines beyond READ_LIMIT follow


Reader = Callable[[int, int], Reading | None]  # (job id, after) -> None: no such job


def _state_of(job: dict[str, Any], last_seq: int) -> dict[str, Any]:
    return {
        "id": job["id"],
        "state": job["state"],
        "error": job["error"],
        "ended": job["state"] not in RUNNING,
        "last_seq": last_seq,
        "started_at": job["started_at"],
        "finished_at": job["finished_at"],
        "duration_s": job["duration_s"],
    }


def state_reader(gate: Gate) -> Reader:
    """Reads through the app's ``gate`` (one request's worth of the context; call it
    from a worker thread). The row first, then the lines: when the row says the job ended, the
    lines read after it are all it logged (the runner writes its log before its end)."""

    def read(job_id: int, after: int) -> Reading | None:
        with gate.use(source="events") as ctx:
            row = jobs.get_job(ctx.engine, job_id)
            if row is None:
                return None
            job = jobs.job_json(row)
            rows, _first = joblogs.read_lines(ctx.engine, job_id, after=after, limit=READ_LIMIT + 1)
            last_seq = joblogs.last_seq(ctx.engine, job_id)
        lines = [
            {"seq": r.seq, "time": _iso(r.time), "level": r.level, "text": r.text}
            for r in rows[:READ_LIMIT]
        ]
        return Reading(_state_of(job, last_seq), job["progress"], lines, len(rows) > READ_LIMIT)

    return read


def _iso(value: datetime) -> str:
    """A stored time in UTC (SQLite hands it back without its zone)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return str(value.astimezone(UTC).isoformat())


@dataclass
class _Watch:
    """One watched job: its subscribers' queues and what the poller last saw."""

    job_id: int
    cursor: int  # the last log line the poller read
    queues: set[asyncio.Queue[JobEvent | None]] = field(default_factory=set)
    state: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None  # the poller (None: not started, or no job)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # the first read is done
    served: int = 0  # watchers it had in all


class WatcherHub:
    """The watched jobs of one server process, one poller each (see the module's
    docstring). Used from the event loop only; the reads run in worker threads."""

    def __init__(self, read: Reader, *, every: float = POLL_EVERY) -> None:
        self.read = read
        self.every = every
        self._watches: dict[int, _Watch] = {}
        self.polls = 0  # reads of the state by the pollers (for tests and the benchmark)

    def watching(self) -> dict[int, int]:
        """{job id: watchers} now."""
        return {job_id: len(watch.queues) for job_id, watch in self._watches.items()}

    async def watch(self, job_id: int, *, after: int = 0) -> AsyncGenerator[JobEvent, None]:
        """:func:`watch_job`'s events (see the module's docstring)."""
        queue: asyncio.Queue[JobEvent | None] = asyncio.Queue(QUEUE_LIMIT)
        watch = self._watches.get(job_id)
        if watch is None:
            watch = await self._start(job_id)
        else:
            await watch.ready.wait()  # the first watcher's read of the job
            if watch.task is None:
                raise JobNotFound(job_id=job_id)
        watch.queues.add(queue)
        watch.served += 1
        # What the poller saw so far; later changes come through the queue, after these.
        known_state, known_progress = watch.state, watch.progress
        delivered = after
        try:
            async for line in self._lines(job_id, delivered, None):  # what is stored
                delivered = line.data["seq"]
                yield line
            if known_state is not None:
                if not known_state["ended"]:
                    yield JobEvent("state", known_state, str(delivered))
                if known_progress is not None:
                    yield JobEvent("progress", known_progress, str(delivered))
            while True:
                if known_state is not None and known_state["ended"]:
                    event: JobEvent | None = JobEvent("state", known_state, "")
                    known_state = None
                else:
                    event = await queue.get()
                if event is None:
                    return  # dropped (fell behind) or the poller failed: reconnect
                if event.kind == "log":
                    seq = int(event.data["seq"])
                    if seq <= delivered:
                        continue  # read already while catching up
                    if seq > delivered + 1:  # lines the poller read before we came
                        async for line in self._lines(job_id, delivered, seq - 1):
                            delivered = line.data["seq"]
                            yield line
                    delivered = seq
                    yield JobEvent("log", event.data, str(delivered))
                    continue
                if event.kind == "state" and event.data["ended"]:
                    # Every line it logged, then its end (the last event).
                    async for line in self._lines(job_id, delivered, event.data["last_seq"]):
                        delivered = line.data["seq"]
                        yield line
                    yield JobEvent("state", event.data, str(delivered))
                    return
                yield JobEvent(event.kind, event.data, str(delivered))
        finally:
            watch.queues.discard(queue)
            if not watch.queues and watch.task is not None and not watch.task.done():
                watch.task.cancel()
                if self._watches.get(job_id) is watch:
                    del self._watches[job_id]
                logger.info(
                    f"events of job {job_id}: the last of {watch.served} watcher(s) left; "
                    "polling stopped"
                )

    async def _start(self, job_id: int) -> _Watch:
        """Watch ``job_id``: registered at once (the watchers that come meanwhile wait
        for it, not read it again), its poller started from its last log line."""
        watch = _Watch(job_id, cursor=0)
        self._watches[job_id] = watch
        try:
            first = await run_in_threadpool(self.read, job_id, MAX_SEQ)
            if first is None:
                raise JobNotFound(job_id=job_id)
        except BaseException:
            if self._watches.get(job_id) is watch:
                del self._watches[job_id]
            watch.ready.set()  # with no task: the waiting watchers raise JobNotFound
            raise
        watch.cursor = first.state["last_seq"]
        watch.task = asyncio.create_task(self._poll(watch), name=f"events-{job_id}")
        watch.ready.set()
        logger.info(f"events of job {job_id}: watched")
        return watch

    async def _lines(self, job_id: int, after: int, until: int | None) -> AsyncIterator[JobEvent]:
        """Stored log lines after ``after`` up to ``until`` (None: all), as events."""
        while until is None or after < until:
            reading = await run_in_threadpool(self.read, job_id, after)
            if reading is None:
                return
            for line in reading.lines:
                if until is not None and line["seq"] > until:
                    return
                after = line["seq"]
                yield JobEvent("log", line, str(after))
            if not reading.more:
                return

    async def _poll(self, watch: _Watch) -> None:
        """Read the job every ``every`` seconds and fan out what changed, until its
        last watcher leaves (cancelled) or it ended."""
        try:
            while True:
                reading = await run_in_threadpool(self.read, watch.job_id, watch.cursor)
                self.polls += 1
                if reading is None:  # deleted meanwhile: end every stream
                    self._publish(watch, None)
                    return
                for line in reading.lines:
                    self._publish(watch, JobEvent("log", line, str(line["seq"])))
                    watch.cursor = line["seq"]
                if reading.more:
                    continue
                if reading.progress is not None and reading.progress != watch.progress:
                    watch.progress = reading.progress
                    self._publish(watch, JobEvent("progress", reading.progress, ""))
                if watch.state is None or reading.state["state"] != watch.state["state"]:
                    watch.state = reading.state
                    self._publish(watch, JobEvent("state", reading.state, ""))
                if reading.state["ended"]:
                    if self._watches.get(watch.job_id) is watch:
                        del self._watches[watch.job_id]
                    logger.info(
                        f"events of job {watch.job_id}: job {reading.state['state']}; "
                        f"polling stopped ({watch.served} watcher(s))"
                    )
                    return
                await asyncio.sleep(self.every)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001  (said once; the watchers reconnect)
            logger.warning(f"events of job {watch.job_id}: polling failed: {error!r}")
            if self._watches.get(watch.job_id) is watch:
                del self._watches[watch.job_id]
            self._publish(watch, None)

    def _publish(self, watch: _Watch, event: JobEvent | None) -> None:
        for queue in list(watch.queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a watcher that stopped reading: dropped
                watch.queues.discard(queue)
                with suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)


def hub_of(app: FastAPI) -> WatcherHub:
    """The app's hub, made at first use (reading through the app's gate)."""
    hub: WatcherHub | None = getattr(app.state, "watcher_hub", None)
    if hub is None:
        hub = app.state.watcher_hub = WatcherHub(state_reader(app.state.gate))
    return hub


def watch_job(app: FastAPI, job_id: int, *, after: int = 0) -> AsyncGenerator[JobEvent, None]:
    """Job ``job_id``'s events, live (the contract: this module's docstring). No
    permission is checked here."""
    return hub_of(app).watch(job_id, after=after)


router = APIRouter(prefix=API, tags=["admin"])

EVENTS_DOC: dict[int | str, dict[str, Any]] = {
    "200": {
        "description": "Server-sent events (text/event-stream): `log`, `progress` and "
        "`state` events with JSON data; the stream ends after the `state` whose `ended` is "
        "true. Each event's id is the last log line number sent (for Last-Event-ID).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def _resume_point(after: int, last_event_id: str | None) -> int:
    """Where the stream resumes: ``Last-Event-ID`` (a reconnecting browser) wins over
    ``after``; either must be a log line number."""
    if last_event_id is None or last_event_id.strip() == "":
        return after
    text = last_event_id.strip()
    if not text.isdigit() or int(text) > MAX_SEQ:
        raise UsageError(message=f"Last-Event-ID must be a log line number, not {text[:40]!r}")
    return int(text)


async def while_authenticated(
    request: Request, events: AsyncIterator[JobEvent]
) -> AsyncIterator[JobEvent]:
    """``events`` for as long as the request's token or session still authenticates,
    checked again at most every ``COSTOR_EVENTS_RECHECK_S`` seconds (30) as events
    come: a stream of a job that runs for hours ends soon after a logout, a revocation
    or an expiry, instead of going on with what its first check let in."""
    every = float(os.environ.get("COSTOR_EVENTS_RECHECK_S", RECHECK_EVERY))
    checked_at = time.monotonic()
    async for event in events:
        if time.monotonic() - checked_at >= every:
            if not await run_in_threadpool(still_authenticated, request):
                return
            checked_at = time.monotonic()
        yield event


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={**error_responses(400, 401, 403, 404), **EVENTS_DOC},
)
async def get_job_events(
    request: Request,
    job_id: Annotated[int, InPath(ge=1, le=documents.MAX_JOB_ID)],
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="the last log line number already read")
    ] = 0,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    access: Access = requires("jobs.read", per_object=True),
) -> EventSourceResponse:
    """The job, live: its log lines after `after` (or `Last-Event-ID`), its progress
    whenever it changes and its state, as server-sent events, until it ends (a job that
    ended: what it logged, its last progress and its end, at once)."""
    start = _resume_point(after, last_event_id)

    def visible() -> None:
        with use(request) as ctx:
            access.job(documents.job_document(ctx, job_id), set(ctx.inventory.clients))

    await run_in_threadpool(visible)
    events = watch_job(request.app, job_id, after=start)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            async for event in while_authenticated(request, events):
                yield event.sse()
        finally:
            await events.aclose()

    ping = float(os.environ.get("COSTOR_EVENTS_PING_S", PING_EVERY))
    return EventSourceResponse(stream(), ping=ping, send_timeout=30)


__all__ = [
    "POLL_EVERY",
    "RECHECK_EVERY",
    "JobEvent",
    "Reading",
    "WatcherHub",
    "router",
    "state_reader",
    "watch_job",
    "while_authenticated",
]
