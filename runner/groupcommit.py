"""Group commit: the ledger writes of every message in flight, made durable together.

A message's `sending` mark must be durable before its request leaves, and a commit costs an
fsync. So marks (and the outcomes finished meanwhile) are gathered from all workers and written
in one transaction by a writer thread of its own, which starts the next commit the moment the
last one is done, without waiting for the event loop to notice (the loop is busy sending: a
mark's wait is what keeps a request slot idle, measured as the largest cost of the ledger).
The event loop only hears back: one future per commit, for all the marks it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from .ledger import Ledger, Outcome

FLUSH_AFTER = 0.5  # seconds an outcome may wait for a mark to carry it to disk


class GroupCommit:
    def __init__(self, ledger: Ledger, loop: asyncio.AbstractEventLoop) -> None:
        self.ledger = ledger
        self.loop = loop
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._marks: list[tuple[str, str, str]] = []
        self._outcomes: list[Outcome] = []
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._durable: asyncio.Future[None] | None = None  # for the marks not yet written
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flowrun-ledger", daemon=True)
        self._thread.start()

    async def mark(self, step: str, recipient: str, digest: str) -> None:
        """Add a `sending` mark to the next commit; return once that commit is durable."""
        with self._lock:
            self._marks.append((step, recipient, digest))
            durable = self._durable
            if durable is None:
                durable = self._durable = self.loop.create_future()
        self._wake.set()
        await durable

    def record(self, outcome: Outcome) -> None:
        """An outcome rides with the next commit (within FLUSH_AFTER seconds at the latest,
        so that what the API accepted is on disk soon even when no mark follows)."""
        with self._lock:
            self._outcomes.append(outcome)

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Another write (an upload's media id), on the writer thread, before the next commit."""
        future: asyncio.Future[Any] = self.loop.create_future()
        with self._lock:
            self._calls.append((function, args, future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Write everything still pending and stop the writer; a failed last commit is raised,
        never ignored (the run would report messages the ledger does not hold)."""
        with self._lock:
            self._closing = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join)
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_AFTER)
            with self._lock:
                self._wake.clear()
                marks, self._marks = self._marks, []
                outcomes, self._outcomes = self._outcomes, []
                calls, self._calls = self._calls, []
                durable, self._durable = self._durable, None
                closing = self._closing
            for function, args, future in calls:
                self._call(function, args, future)
            error = None
            try:
                self.ledger.commit(outcomes, marks)
            except Exception as exc:  # reported to the marks waiting on it, and at close
                error = exc
                self._failure = self._failure or exc
            if durable is not None:
                self._tell(_settle, durable, error)
            if closing and not (self._marks or self._outcomes or self._calls):
                return

    def _call(self, function: Callable[..., Any], args: tuple[Any, ...], future: Any) -> None:
        try:
            result = function(*args)
        except Exception as exc:
            self._tell(_settle, future, exc)
        else:
            self._tell(_resolve, future, result)

    def _tell(self, callback: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the loop is gone (a second Ctrl-C), nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback, *args)


def _settle(future: asyncio.Future[Any], error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(None)


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)
