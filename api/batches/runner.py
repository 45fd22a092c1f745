"""Drive one batch: feed its lines to the workers' batch lane, collect the answers, write the files.

Exactly once: every step that finishes lines first writes their output/error lines at the file
offsets Redis has committed (then truncates and fsyncs), and then, in one MULTI under the batch's
lease, moves those offsets, sets the lines' done bits, updates the counts and retires the jobs (their
result streams go with them). A crash before the MULTI leaves bytes past the committed offsets,
which the next driver truncates away and writes again from the same still-present result streams;
a crash after it has nothing left to redo. Feeding is one MULTI too: the lane entries, the job
records and the input cursor move together.

At most `LLM_BATCH_WINDOW_LINES` lines of a batch are in flight; more are read from the input file
as answers come back. A job a worker lost (503) is sent again, up to MAX_TRIES; a grouped job that
failed is split, so only the line at fault gets the error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.batches.files import FileStore, derived_file_id
from api.batches.lines import (
    ENDPOINT_CLASSES,
    Endpoint,
    Line,
    Outcome,
    error_line,
    read_at,
    read_lines,
    unfinished_line,
)
from api.batches.schemas import BatchState, Status
from api.batches.store import BatchStore, Commit, Lease, line_done
from api.directory import ModelDirectory
from common import keys
from common.errors import EngineFailure, ServiceError, from_wire
from common.protocol import ATTEMPT_FIELD, DATA_FIELD, Message, MessageKind, WireError
from common.settings import Settings

log = logging.getLogger(__name__)

MAX_TRIES = 3
READ_COUNT = 1000  # entries per result stream per read
DEADLINE_GRACE_S = 60  # workers keep a batch's jobs this long past its expiry (the finaliser cancels them)
CLOSE_CHUNK_LINES = 1000


@dataclass
class BatchEnv:
    """What the batch lifecycle needs, built once per API process."""

    settings: Settings
    redis: Redis
    store: BatchStore
    files: FileStore
    directory: ModelDirectory

    def folder(self, batch_id: str) -> Path:
        return self.settings.data_dir / "batches" / batch_id

    def input_path(self, batch_id: str) -> Path:
        return self.folder(batch_id) / "input.jsonl"


def write_at(path: Path, offset: int, data: bytes) -> int:
    """Write `data` at `offset`, drop anything after it, fsync; the new end (blocking)."""
    with path.open("r+b" if path.exists() else "w+b") as fh:
        fh.seek(offset)
        fh.write(data)
        fh.truncate()
        fh.flush()
        os.fsync(fh.fileno())
        return offset + len(data)


def truncate_to(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size != size:
        with path.open("r+b") as fh:
            fh.truncate(size)


@dataclass
class Flight:
    """A job in flight and what its result stream has said so far."""

    lines: list[list[int]]
    tries: int = 0
    last_id: str = "0"
    attempt: bytes | None = None
    messages: list[Message] = field(default_factory=list)


class Driver:
    def __init__(self, env: BatchEnv, lease: Lease) -> None:
        self.env = env
        self.lease = lease
        self.id = lease.batch_id
        self.state: BatchState | None = None
        self.flights: dict[str, Flight] = {}
        self.eof = False
        self.folder = env.folder(self.id)
        self.input = env.input_path(self.id)
        self.output = self.folder / "output.jsonl"
        self.errors = self.folder / "errors.jsonl"
        self.endpoint: Endpoint | None = None

    # --- state ---

    async def resync(self) -> BatchState:
        """(Re)load everything from Redis, and cut the files back to their committed sizes."""
        state = await self.env.store.require(self.id)
        self.state = state
        deadline_ms = (state.expires_at + DEADLINE_GRACE_S) * 1000
        self.endpoint = ENDPOINT_CLASSES[state.endpoint](self.env.settings, deadline_ms)
        records = await self.env.store.inflight(self.id)
        self.flights = {j: Flight(r["lines"], r["tries"]) for j, r in records.items()}
        self.eof = False
        await asyncio.to_thread(truncate_to, self.output, state.out_bytes)
        await asyncio.to_thread(truncate_to, self.errors, state.err_bytes)
        return state

    @property
    def finished(self) -> bool:
        return self.eof and not self.flights

    async def run(self, budget_s: float) -> str:
        """Feed and collect for up to `budget_s`: "done" (every line finished), "stopped" (cancelled or
        expired: the finaliser takes over) or "slice" (time is up, go on in the next slice). Redis
        errors (a restart) are waited out, then everything is re-read from Redis."""
        loop = asyncio.get_running_loop()
        until = loop.time() + budget_s
        stale = True
        while loop.time() < until:
            try:
                if stale:
                    await self.resync()
                    stale = False
                outcome = await self._step()
                if outcome is not None:
                    return outcome
            except (RedisError, OSError) as exc:
                log.warning("batch %s: %s; resuming from what Redis holds", self.id, exc)
                stale = True
                await asyncio.sleep(0.5)
        return "slice"

    async def _step(self) -> str | None:
        await self.env.store.refresh(self.lease)
        fresh = await self.env.store.require(self.id)
        if fresh.status != Status.IN_PROGRESS or fresh.expiring or time.time() >= fresh.expires_at:
            return "stopped"
        await self.feed()
        if self.finished:
            return "done"
        await self.collect(block_ms=1000)
        return None

    # --- steps ---

    async def feed(self) -> None:
        """Send more lines when at least half the window is free (or nothing is in flight)."""
        assert self.state is not None and self.endpoint is not None
        window = self.env.settings.batch_window_lines
        room = window - sum(len(f.lines) for f in self.flights.values())
        if self.eof or (room < max(1, window // 2) and self.flights):
            return
        state = self.state
        lines, next_line, next_offset, eof = await asyncio.to_thread(
            read_lines, self.input, state.next_line, state.next_offset, room)
        planned, errors = await asyncio.to_thread(self.endpoint.plan, lines)
        step = Commit(cursor=(next_line, next_offset), submit=[(p.job, {"lines": p.lines, "tries": 0})
                                                              for p in planned])
        await self._apply(step, errors)
        self.eof = eof

    async def collect(self, block_ms: int | None) -> None:
        """Read the in-flight jobs' result streams; finish the jobs whose terminal message came."""
        streams: dict[Any, Any] = {keys.result_stream(j): f.last_id for j, f in self.flights.items()}
        if not streams:
            return
        reply = await self.env.redis.xread(streams, count=READ_COUNT, block=block_ms)
        finished: dict[str, Flight] = {}
        for raw_stream, entries in reply or []:
            job_id = raw_stream.decode().removeprefix(keys.RESULT_STREAM_PREFIX)
            flight = self.flights.get(job_id)
            if flight is not None and job_id not in finished and self._take(flight, entries):
                finished[job_id] = flight
        if finished:
            await self._finish(finished)

    @staticmethod
    def _take(flight: Flight, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> bool:
        """Add a stream's new messages to its flight; True once the terminal one is there."""
        for entry_id, fields in entries:
            flight.last_id = entry_id.decode()
            try:
                message = Message.decode(fields[DATA_FIELD])
            except (WireError, KeyError) as exc:
                log.error("bad result message: %s", exc)
                continue
            attempt = fields.get(ATTEMPT_FIELD)
            if attempt != flight.attempt:  # a restarted worker runs the job again from the start
                flight.attempt, flight.messages = attempt, []
            flight.messages.append(message)
            if message.terminal:
                return True
        return False

    async def _finish(self, finished: dict[str, Flight]) -> None:
        step, outcomes = Commit(), []
        for job_id, flight in finished.items():
            lines = await asyncio.to_thread(read_at, self.input, flight.lines)
            step.retire.append(job_id)
            outcomes += await asyncio.to_thread(self._outcomes, job_id, flight, lines, step)
        await self._apply(step, outcomes)

    def _outcomes(self, job_id: str, flight: Flight, lines: list[Line], step: Commit) -> list[Outcome]:
        """The lines a finished job yields; or none, when its lines are sent again (added to `step`)."""
        assert self.endpoint is not None
        terminal = flight.messages[-1]
        if terminal.kind is MessageKind.ERROR:
            exc = from_wire(terminal.body)
            if len(lines) > 1 or (exc.status == 503 and flight.tries + 1 < MAX_TRIES):
                tries = flight.tries + (len(lines) == 1)
                failed: list[Outcome] = []
                for line in lines:  # one job per line: only the line at fault fails
                    planned, errors = self.endpoint.plan([line])
                    step.submit += [(p.job, {"lines": p.lines, "tries": tries}) for p in planned]
                    failed += errors
                return failed
            return [error_line(line, job_id, exc) for line in lines]
        try:
            return self.endpoint.render(job_id, lines, flight.messages)
        except (ServiceError, KeyError, TypeError, ValueError) as exc:
            failure = exc if isinstance(exc, ServiceError) else EngineFailure(f"unreadable answer: {exc!r}")
            log.exception("batch %s: could not render job %s", self.id, job_id)
            return [error_line(line, job_id, failure) for line in lines]

    async def _apply(self, step: Commit, outcomes: list[Outcome]) -> None:
        """Write the outcomes' lines at the committed offsets, then commit the step; update local state."""
        assert self.state is not None
        state = self.state
        good = [o for o in outcomes if o.ok]
        bad = [o for o in outcomes if not o.ok]
        if good:
            step.out_bytes = await asyncio.to_thread(write_at, self.output, state.out_bytes,
                                                     b"".join(o.data for o in good))
        if bad:
            step.err_bytes = await asyncio.to_thread(write_at, self.errors, state.err_bytes,
                                                     b"".join(o.data for o in bad))
        step.completed, step.failed = len(good), len(bad)
        step.done_lines = [o.line for o in outcomes]
        if not step:
            return
        await self.env.store.commit(self.lease, step)
        state.completed += step.completed
        state.failed += step.failed
        state.out_bytes = step.out_bytes if step.out_bytes is not None else state.out_bytes
        state.err_bytes = step.err_bytes if step.err_bytes is not None else state.err_bytes
        if step.cursor is not None:
            state.next_line, state.next_offset = step.cursor
        for job_id in step.retire:
            self.flights.pop(job_id, None)
        for job, record in step.submit:
            self.flights[job.id] = Flight(record["lines"], record["tries"])

    # --- the end ---

    async def close_rest(self, code: str, message: str) -> None:
        """Answers already there are kept; in-flight jobs are cancelled; every line not finished goes to
        the error file with `code` (the batch expired or was cancelled)."""
        assert self.state is not None and self.endpoint is not None
        await self.collect(block_ms=None)
        if self.flights:
            await self._apply(Commit(retire=list(self.flights), cancel=list(self.flights)), [])
        bitmap = await self.env.store.done_bitmap(self.id)
        number, offset, eof = 1, 0, False
        while not eof:
            lines, number, offset, eof = await asyncio.to_thread(
                read_lines, self.input, number, offset, CLOSE_CHUNK_LINES)
            rest = [ln for ln in lines if not line_done(bitmap, ln.number)]
            await self._apply(Commit(), [unfinished_line(ln, code, message) for ln in rest])

    async def publish(self) -> dict[str, str]:
        """Make the output and error files Batch API files (ids derived from the batch id)."""
        assert self.state is not None
        state, ids = self.state, {}
        for path, count, name, field_ in ((self.output, state.completed, "output", "output_file_id"),
                                          (self.errors, state.failed, "errors", "error_file_id")):
            if count:
                meta = await asyncio.to_thread(self.env.files.adopt, path, derived_file_id(f"{self.id}/{name}"),
                                               f"{self.id}_{name}.jsonl", "batch_output", count)
                ids[field_] = meta.id
        return ids
