"""Group commit: the ledger writes of every message in flight, made durable together.

A message's `sending` mark must be durable before its request leaves, and a commit costs an
fsync. So marks (and the outcomes finished meanwhile) are gathered from all workers and sent as
one batch to the ledger writer process (ledgerwriter.py), which commits it in one transaction;
while it does, the next batch gathers. One future per batch, for all the marks it carries. A
mark's wait is what keeps a request slot idle, so it is kept short: the commit runs outside this
process's GIL, and the next batch leaves the moment the last is durable.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from .ledger import Ledger, LedgerError, Outcome
from .ledgerwriter import HEADER, frame

FLUSH_AFTER = 0.5  # seconds an outcome may wait for a mark to carry it to disk


class GroupCommit:
    """Batches of ledger writes, one in the writer's hands at a time."""

    def __init__(self, ledger: Ledger, writer: asyncio.subprocess.Process) -> None:
        self.ledger = ledger
        self._writer = writer
        self._marks: list[list[str]] = []
        self._outcomes: list[list[Any]] = []
        self._uploads: list[list[str]] = []
        self._durable: asyncio.Future[None] | None = None  # for what is gathering now
        self._pump: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failure: LedgerError | None = None
        self._flush_due = False  # outcomes have waited FLUSH_AFTER: they leave with no mark

    # The writer's command line (tests put a failing writer here)
    COMMAND: tuple[str, ...] = (sys.executable, "-m", "runner.ledgerwriter")

    @classmethod
    async def start(cls, ledger: Ledger) -> GroupCommit:
        writer = await asyncio.create_subprocess_exec(
            *cls.COMMAND,
            str(ledger.path),
            ledger.flow,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(ledger, writer)

    async def mark(self, step: str, recipient: str, digest: str) -> None:
        """Add a `sending` mark to the next batch; return once that batch is durable."""
        self._marks.append([step, recipient, digest])
        await self._next_batch()

    def record(self, outcome: Outcome) -> None:
        """An outcome rides with the next batch (within FLUSH_AFTER seconds at the latest,
        so that what the API accepted is on disk soon even when no mark follows)."""
        self._outcomes.append(
            [
                outcome.step,
                outcome.recipient,
                outcome.state,
                outcome.message_id,
                outcome.http_status,
                outcome.error_code,
                outcome.error_title,
                outcome.error_details,
                outcome.attempts,
            ]
        )
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flush)

    async def remember_upload(self, api: str, sha256: str, media_id: str) -> None:
        self._uploads.append([api, sha256, media_id])
        await self._next_batch()

    def _flush(self) -> None:
        self._timer = None
        if self._outcomes:
            self._flush_due = True
            if self._pump is None:
                self._pump = asyncio.ensure_future(self._send_batches())

    async def _next_batch(self) -> None:
        durable = self._durable
        if durable is None:
            durable = self._durable = asyncio.get_running_loop().create_future()
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._send_batches())
        await durable

    async def _send_batches(self) -> None:
        """Hand the writer one batch at a time, as long as anything is gathering."""
        try:
            while self._due():
                self._flush_due = False
                durable, self._durable = self._durable, None
                batch = {"marks": self._marks, "outcomes": self._outcomes, "uploads": self._uploads}
                self._marks, self._outcomes, self._uploads = [], [], []
                try:
                    error = await self._commit(batch)
                except Exception as exc:  # never leave a mark waiting for ever
                    error = self._failure = LedgerError(f"{self.ledger.path}: {exc}")
                if durable is not None and not durable.done():
                    if error is None:
                        durable.set_result(None)
                    else:
                        durable.set_exception(error)
        finally:
            self._pump = None

    def _due(self) -> bool:
        """Whether a batch should leave now: someone waits for it (a mark, an upload), or
        outcomes have waited long enough. Outcomes alone do not keep the writer busy: when
        messages trickle (a paced run) their answers come one by one, and a batch for each
        was a commit (an fsync, a pipe round trip) per message, not per group."""
        return bool(self._marks or self._uploads or (self._outcomes and self._flush_due))

    async def _commit(self, batch: dict[str, Any]) -> LedgerError | None:
        if self._failure is not None:
            return self._failure
        stdin, stdout = self._writer.stdin, self._writer.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            stdin.write(frame(batch))
            (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
            answer = await stdout.readexactly(size)
        # a dead writer: a broken pipe (OSError), an early end (IncompleteReadError), or with
        # uvloop a write to a pipe already closed (RuntimeError)
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            self._failure = LedgerError(
                f"{self.ledger.path}: the ledger writer stopped unexpectedly; nothing more is"
                " sent (run again: messages in flight are reported uncertain)"
            )
            return self._failure
        error = _answer(answer)
        if error is not None:
            self._failure = LedgerError(error)
        return self._failure

    async def close(self) -> None:
        """Write everything still pending and stop the writer; a failed commit is raised,
        never ignored (the run would report messages the ledger does not hold)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            while self._pump is not None:
                await asyncio.wait([self._pump])
            if self._marks or self._outcomes or self._uploads:
                self._flush_due = True
                self._pump = asyncio.ensure_future(self._send_batches())
                await asyncio.wait([self._pump])
        finally:
            if self._writer.stdin is not None:
                self._writer.stdin.close()
            await self._writer.wait()
        if self._failure is not None:
            raise self._failure


def _answer(data: bytes) -> str | None:
    import orjson

    error = orjson.loads(data)["error"]
    return None if error is None else str(error)
