"""Group commit: writes from many waiters made durable together, one commit in flight at once.

A commit costs an fsync, and the writes that wait for one (a message's `sending` mark before
its request leaves; a webhook callback before it is answered 200) keep something idle while
they wait. So writes are gathered while the previous commit runs, and the next commit leaves
the moment it is done: one future per batch for everyone in it. `Batcher` is that mechanism,
whatever commits; `GroupCommit` is a run's, committing through the writer process (writer.py),
and the webhook receiver commits statuses with a `Batcher` of its own.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import orjson

from .locations import child_environment
from .records import Batch, LedgerError, Mark, Outcome, Preference, Uploaded
from .wire import HEADER, frame, to_wire

T = TypeVar("T")
FLUSH_AFTER = 0.5  # seconds a write that nobody waits for may wait for a commit to carry it


class Batcher(Generic[T]):
    """Writes gathered into batches; `commit` makes one batch durable (or raises)."""

    def __init__(self, commit: Callable[[list[T]], Awaitable[None]]) -> None:
        self._commit = commit
        self._pending: list[T] = []
        self._durable: asyncio.Future[None] | None = None  # for what is gathering now
        self._pump: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flush_due = False  # unwaited writes have waited FLUSH_AFTER: they go now

    async def write(self, *items: T) -> None:
        """Add to the next batch; return once that batch is durable (its error is raised)."""
        self._pending.extend(items)
        durable = self._durable
        if durable is None:
            durable = self._durable = asyncio.get_running_loop().create_future()
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._commit_batches())
        await durable

    async def flush(self) -> None:
        """Return once what was added so far is durable (or its commit failed)."""
        if self._pending:
            await self.write()
        elif self._pump is not None:
            await asyncio.wait([self._pump])

    def add(self, item: T) -> None:
        """Add to the next batch without waiting; it is committed within FLUSH_AFTER seconds
        at the latest, so what happened is on disk soon even when no waited write follows."""
        self._pending.append(item)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._pending:
            self._flush_due = True
            if self._pump is None:
                self._pump = asyncio.ensure_future(self._commit_batches())

    def _due(self) -> bool:
        """Whether a batch should leave now: someone waits for it (a mark, an upload, a
        callback), or unwaited writes have waited long enough. Unwaited writes alone do not
        keep the committer busy: when messages trickle (a paced run) their outcomes come one
        by one, and a batch for each was a commit (an fsync, a pipe round trip) per message,
        not per group (bench/paced_bench.py)."""
        return bool(self._pending) and (self._durable is not None or self._flush_due)

    async def _commit_batches(self) -> None:
        """Commit one batch at a time, as long as anything is gathering."""
        try:
            while self._due():
                self._flush_due = False
                batch, self._pending = self._pending, []
                durable, self._durable = self._durable, None
                error: BaseException | None = None
                try:
                    await self._commit(batch)
                except Exception as exc:  # never leave a waiter waiting for ever
                    error = exc
                if durable is not None and not durable.done():
                    if error is None:
                        durable.set_result(None)
                    else:
                        durable.set_exception(error)
        finally:
            self._pump = None

    async def close(self) -> None:
        """Commit everything still pending."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pump is not None:
            await asyncio.wait([self._pump])
        if self._pending:
            self._flush_due = True
            self._pump = asyncio.ensure_future(self._commit_batches())
            await asyncio.wait([self._pump])


class GroupCommit:
    """A run's ledger writes, committed by the writer process (writer.py), one batch at a
    time. After a failed commit every later one fails too: the run must stop, since messages
    it would send could not be marked."""

    # The writer's command line (tests put a failing writer here)
    COMMAND: tuple[str, ...] = (sys.executable, "-m", "runner.ledger.writer")

    def __init__(self, location: str, writer: asyncio.subprocess.Process) -> None:
        self.location = location
        self._writer = writer
        self._failure: LedgerError | None = None
        self._batches: Batcher[Mark | Outcome | Uploaded | Preference] = Batcher(self._commit)

    @classmethod
    async def start(cls, location: str, flow: str, runner: int | None = None) -> GroupCommit:
        runs_as = () if runner is None else (str(runner),)
        writer = await asyncio.create_subprocess_exec(
            *cls.COMMAND,
            location,
            flow,
            *runs_as,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # a PostgreSQL ledger's password, in the writer's environment, never on its command
            # line (locations.py)
            env=child_environment(location),
        )
        return cls(location, writer)

    async def mark(self, step: str, recipient: str, body_hash: str) -> None:
        """A `sending` mark; back once it is durable."""
        await self._batches.write(Mark(step, recipient, body_hash))

    def record(self, outcome: Outcome | Preference) -> None:
        """An outcome (or a preference an answer revealed): it rides with the next batch."""
        self._batches.add(outcome)

    async def flush(self) -> None:
        """Everything recorded so far is durable: the ledger now says what this run did."""
        await self._batches.flush()

    async def remember_upload(self, api: str, sha256: str, media_id: str) -> None:
        await self._batches.write(Uploaded(api, sha256, media_id))

    async def _commit(self, items: list[Mark | Outcome | Uploaded | Preference]) -> None:
        if self._failure is not None:
            raise self._failure
        batch = Batch()
        for item in items:
            if isinstance(item, Mark):
                batch.marks.append(item)
            elif isinstance(item, Outcome):
                batch.outcomes.append(item)
            elif isinstance(item, Uploaded):
                batch.uploads.append(item)
            else:
                batch.preferences.append(item)
        try:
            error = await self._exchange(batch)
        except Exception as exc:  # unexpected: still stops the run, with one line
            error = f"{self.location}: {exc}"
        if error is not None:
            self._failure = LedgerError(error)
            raise self._failure

    async def _exchange(self, batch: Batch) -> str | None:
        """One frame to the writer, its answer back: the error it met, if any."""
        stdin, stdout = self._writer.stdin, self._writer.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            stdin.write(frame(to_wire(batch)))
            (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
            answer = await stdout.readexactly(size)
        # a dead writer: a broken pipe (OSError), an early end (IncompleteReadError), or with
        # uvloop a write to a pipe already closed (RuntimeError)
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            return (
                f"{self.location}: the ledger writer stopped unexpectedly; nothing more is"
                " sent (run again: messages in flight are reported uncertain)"
            )
        return _error_of(answer)

    async def close(self) -> None:
        """Write everything still pending and stop the writer; a failed commit is raised,
        never ignored (the run would report messages the ledger does not hold)."""
        try:
            await self._batches.close()
        finally:
            if self._writer.stdin is not None:
                self._writer.stdin.close()
            await self._writer.wait()
        if self._failure is not None:
            raise self._failure


def _error_of(answer: bytes) -> str | None:
    error = orjson.loads(answer)["error"]
    return None if error is None else str(error)
