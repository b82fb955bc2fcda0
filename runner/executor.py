"""The executor: sends every recipient's messages, at most once each, and records what happened.

Recipients stream from the plan into a bounded queue; `concurrency` workers each serve one
recipient at a time, its steps strictly in order (a failed step stops the later ones). Before a
request leaves, its `sending` mark is committed together with the outcomes finished so far (one
group commit for everyone waiting), so after a hard kill at most `concurrency` rows are left
`sending`, and the next run reports them as `uncertain` instead of sending them again.

What counts as done: `sent`. A step skipped by `when`, or blocked by a failed step, is looked at
again on the next run (nothing was sent, so nothing can be sent twice). `failed` and `uncertain`
are retried only with --retry-failed / --retry-uncertain.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import onprem
from .errors import FlowrunError
from .ledger import Ledger, Outcome, State
from .media import LocalMedia
from .plan import Message, Plan, RenderFailure, Skipped
from .progress import Progress
from .recipients import Recipient
from .transport import MaybeDelivered, NotDelivered, Response, Transport

BACKOFF_BASE = 0.5  # seconds; doubled per attempt, with full jitter
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 300.0
FAILURE_STREAK_LIMIT = 100  # this many failures in a row pause the campaign


class UploadFailed(Exception):
    def __init__(self, failure: onprem.ApiFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class StopRun(FlowrunError):
    """A reason to stop the whole run (bad token, a streak of failures): exit 1, one line."""

    exit_code = 1


@dataclass
class RunOptions:
    concurrency: int
    limit: int | None = None
    only: str | None = None
    retry_failed: bool = False
    retry_uncertain: bool = False


@dataclass
class Summary:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0
    blocked: int = 0
    already: int = 0  # sent by an earlier run
    changed: int = 0  # of those, how many the flow now words differently
    held: int = 0  # failed/uncertain from an earlier run, not retried
    uploads: int = 0
    recovered: int = 0  # `sending` rows of a dead run, now uncertain
    interrupted: bool = False
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed or self.uncertain or self.held else 0


def body_hash(body: dict[str, Any]) -> str:
    """A short hash of a request body, stored with each message: it tells whether a step was
    edited after it was sent."""
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _outcome(message: Message, state: State, **fields: Any) -> Outcome:
    return Outcome(message.step.key, message.recipient.phone, state, **fields)


class _Commits:
    """Group commit on a writer thread: marks and outcomes gathered from all workers are
    written in one transaction while the event loop goes on sending. A worker waiting for its
    mark resumes only once the commit that holds it is durable."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.marks: list[tuple[str, str, str]] = []
        self.outcomes: list[Outcome] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowrun-ledger")
        self.running: asyncio.Future[None] | None = None

    async def mark(self, step: str, recipient: str, digest: str) -> None:
        future = asyncio.get_running_loop().create_future()
        self.marks.append((step, recipient, digest))
        self.waiters.append(future)
        if self.running is None:
            self._start()
        await future

    def record(self, outcome: Outcome) -> None:
        """Kept until the next commit: the one that carries the next mark, or the last one."""
        self.outcomes.append(outcome)

    def _start(self) -> None:
        marks, self.marks = self.marks, []
        outcomes, self.outcomes = self.outcomes, []
        waiters, self.waiters = self.waiters, []
        loop = asyncio.get_running_loop()
        self.running = loop.run_in_executor(self.writer, self.ledger.commit, outcomes, marks)
        self.running.add_done_callback(lambda done: self._finished(done, waiters))

    def _finished(self, done: asyncio.Future[None], waiters: list[asyncio.Future[None]]) -> None:
        self.running = None
        error = None if done.cancelled() else done.exception()
        for waiter in waiters:
            if waiter.done():
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(None)
        if self.marks:
            self._start()

    async def write(self, function: Any, *args: Any) -> Any:
        """Another write (an upload's media id), on the same writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.writer, function, *args)

    async def close(self) -> None:
        """Commit everything still pending, then stop the writer thread; a failed last commit
        is raised, never ignored (the run would report messages the ledger does not hold)."""
        try:
            while self.running is not None:
                await asyncio.wait([self.running])
            if self.marks or self.outcomes:
                self._start()
                last = self.running
                assert last is not None
                await asyncio.wait([last])
                error = None if last.cancelled() else last.exception()
                if error is not None:
                    raise error
        finally:
            self.writer.shutdown(wait=True)


class Executor:
    def __init__(
        self,
        plan: Plan,
        *,
        transport: Transport,
        api: str,
        ledger: Ledger,
        options: RunOptions,
        progress: Progress,
    ) -> None:
        self.plan = plan
        self.transport = transport
        self.api = api
        self.ledger = ledger
        self.options = options
        self.progress = progress
        self.summary = Summary()
        self.commits = _Commits(ledger)
        self.retries = plan.flow.settings.retries
        self.rate = plan.flow.settings.rate_per_second
        self._next_slot = 0.0
        self._media: dict[str, asyncio.Task[str]] = {}
        self._stopping = False
        self._stop_error: BaseException | None = None
        self._stop_event = asyncio.Event()
        self._streak = 0

    async def run(self) -> Summary:
        started = time.monotonic()
        self.summary.recovered = self.ledger.recover()
        queue: asyncio.Queue[Recipient | None] = asyncio.Queue(self.options.concurrency * 2)
        workers = [
            asyncio.create_task(self._worker(queue)) for _ in range(self.options.concurrency)
        ]
        self._install_signals()
        try:
            for recipient in self._recipients():
                if self._stopping:
                    break
                await queue.put(recipient)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            await self.commits.close()
            self._remove_signals()
            self.summary.seconds = time.monotonic() - started
        if self._stop_error is not None:
            raise self._stop_error
        return self.summary

    def _recipients(self) -> Iterator[Recipient]:
        count = 0
        for recipient in self.plan.recipients():
            if self.options.only is not None and recipient.phone != self.options.only:
                continue
            if self.options.limit is not None and count >= self.options.limit:
                return
            count += 1
            yield recipient

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    def _on_signal(self) -> None:
        if self._stopping and self.summary.interrupted:
            # A second Ctrl-C: stop at once. Messages in flight stay `sending` in the ledger
            # and are reported uncertain by the next run.
            self.progress.line("flowrun: stopped at once")
            raise SystemExit(130)
        self.summary.interrupted = True
        self._stopping = True
        self._stop_event.set()
        self.progress.line(
            "flowrun: stopping: no new messages; waiting for those in flight "
            "(Ctrl-C again to stop at once)"
        )

    async def _worker(self, queue: asyncio.Queue[Recipient | None]) -> None:
        """Serve recipients until the end of the queue. A worker never dies: an error stops
        the run (and is raised once everything is drained and written), while the worker
        goes on emptying the queue so the producer can never block on a full one."""
        while (recipient := await queue.get()) is not None:
            if self._stopping:
                continue
            try:
                await self._serve(recipient)
            except Exception as exc:
                self._stop(exc)

    async def _serve(self, recipient: Recipient) -> None:
        states = self.ledger.recipient_states(recipient.phone)
        try:
            items = list(self.plan.messages(recipient))
        except RenderFailure as failure:  # validated before the run; kept for safety
            raise StopRun(failure.problem.format()) from None
        for item in items:
            if self._stopping:
                return
            state, sent_hash = states.get(item.step.key, (None, None))
            if state == "sent":
                self.summary.already += 1
                if self._edited(item, sent_hash):
                    self.summary.changed += 1
                continue
            if (state == "failed" and not self.options.retry_failed) or (
                state == "uncertain" and not self.options.retry_uncertain
            ):
                self.summary.held += 1
                return  # later steps wait until this one is settled
            if isinstance(item, Skipped):
                self.commits.record(
                    Outcome(
                        item.step.key,
                        recipient.phone,
                        "skipped",
                        error_title="when",
                        error_details=item.reason,
                        attempts=0,
                    )
                )
                self.summary.skipped += 1
                continue
            if not await self._send(item):
                self._block_rest(items, item, recipient)
                return

    @staticmethod
    def _edited(item: Message | Skipped, sent_hash: str | None) -> bool:
        """Whether a message sent before reads differently now (uploads aside: their body
        holds a media id only known after upload)."""
        if not isinstance(item, Message) or item.upload is not None or not sent_hash:
            return False
        return body_hash(item.body()) != sent_hash

    def _block_rest(self, items: list[Message | Skipped], failed: Message, who: Recipient) -> None:
        later = items[items.index(failed) + 1 :]
        for item in later:
            self.commits.record(
                Outcome(
                    item.step.key,
                    who.phone,
                    "skipped",
                    error_title="blocked",
                    error_details=f"step {failed.step.key} did not go through",
                    attempts=0,
                )
            )
            self.summary.blocked += 1

    async def _send(self, message: Message) -> bool:
        media_id = None
        if message.upload is not None:
            try:
                media_id = await self._media_id(message.upload)
            except UploadFailed as exc:
                return self._failed(message, exc.failure, 1)
        body = message.body(media_id)
        digest = body_hash(body)
        await self.commits.mark(message.step.key, message.recipient.phone, digest)
        attempt = 0
        while True:
            attempt += 1
            await self._pace()
            verdict = await self._attempt(message, body, attempt)
            if verdict is not None:
                return verdict

    async def _attempt(self, message: Message, body: dict[str, Any], attempt: int) -> bool | None:
        """One request for a marked message: True sent, False settled otherwise (failed,
        uncertain, interrupted), None to try again."""
        retry_after = None
        try:
            response = await self.transport.post(onprem.MESSAGES_PATH, json=body)
        except NotDelivered as exc:  # never reached the API: always safe to try again
            failure = onprem.ApiFailure(0, None, "not delivered", str(exc))
            retryable = True
        except MaybeDelivered as exc:  # the API may have it: never sent again blindly
            self.commits.record(
                _outcome(message, "uncertain", error_details=str(exc), attempts=attempt)
            )
            self.summary.uncertain += 1
            self.progress.update(self.summary)
            return False
        else:
            if 200 <= response.status < 300:
                return self._sent(message, response, attempt)
            failure = onprem.failure(response.status, response.data)
            retryable, retry_after = failure.retry, response.retry_after
            if failure.auth:
                self._stop(
                    StopRun(
                        f"the API refused the token ({failure}); check the token the flow's"
                        " api.token reads"
                    )
                )
                retryable = False
        if retryable and attempt <= self.retries:
            return None if await self._may_retry(message, attempt, retry_after) else False
        return self._failed(message, failure, attempt)

    def _sent(self, message: Message, response: Response, attempt: int) -> bool:
        self.commits.record(
            _outcome(
                message,
                "sent",
                message_id=onprem.message_id(response.data),
                http_status=response.status,
                attempts=attempt,
            )
        )
        self.summary.sent += 1
        self._streak = 0
        self.progress.update(self.summary)
        return True

    async def _may_retry(self, message: Message, attempt: int, retry_after: float | None) -> bool:
        """Wait before the next attempt, unless the run is stopping (Ctrl-C must not wait out
        a five-minute Retry-After): then the message was not accepted, and it is recorded as
        skipped ('interrupted') so that the next run sends it."""
        delay = self._backoff(attempt, retry_after)
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), delay)
        if not self._stopping:
            return True
        self.commits.record(
            _outcome(
                message,
                "skipped",
                error_title="interrupted",
                error_details="the run stopped before a retry",
                attempts=attempt,
            )
        )
        self.summary.blocked += 1
        return False

    def _failed(self, message: Message, failure: onprem.ApiFailure, attempts: int) -> bool:
        self.commits.record(
            _outcome(
                message,
                "failed",
                http_status=failure.http_status or None,
                error_code=failure.code,
                error_title=failure.title,
                error_details=failure.details,
                attempts=attempts,
            )
        )
        self.summary.failed += 1
        reason = str(failure)
        self.summary.failures[reason] = self.summary.failures.get(reason, 0) + 1
        self._streak += 1
        if self._streak >= FAILURE_STREAK_LIMIT:
            self._stop(
                StopRun(
                    f"{self._streak} messages in a row failed (the last: {failure}); the run is "
                    "paused: fix the cause and run again to continue"
                )
            )
        self.progress.update(self.summary)
        return False

    def _stop(self, error: BaseException) -> None:
        if self._stop_error is None:
            self._stop_error = error
        self._stopping = True
        self._stop_event.set()

    async def _pace(self) -> None:
        """Keep under `settings.rate`: each request takes the next free time slot."""
        if not self.rate:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)

    @staticmethod
    def _backoff(attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_MAX)
        return random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)))

    async def _media_id(self, media: LocalMedia) -> str:
        """The media id of a local file: from the ledger, or uploaded once for everyone."""
        task = self._media.get(media.sha256)
        if task is None:
            task = asyncio.create_task(self._upload(media))
            self._media[media.sha256] = task
        return await task

    async def _upload(self, media: LocalMedia) -> str:
        known = self.ledger.media_id(self.api, media.sha256)
        if known is not None:
            return known
        data = await asyncio.to_thread(media.path.read_bytes)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.transport.post(
                    onprem.MEDIA_PATH, data=data, content_type=media.mime
                )
            except (NotDelivered, MaybeDelivered) as exc:
                # An upload is safe to repeat: a second copy only costs storage.
                if attempt > self.retries:
                    raise UploadFailed(
                        onprem.ApiFailure(0, None, "upload failed", str(exc))
                    ) from None
                await asyncio.sleep(self._backoff(attempt, None))
                continue
            found = onprem.media_id(response.data) if response.status < 300 else None
            if found is not None:
                await self.commits.write(self.ledger.remember_upload, self.api, media.sha256, found)
                self.summary.uploads += 1
                return found
            failure = onprem.failure(response.status, response.data)
            if failure.auth:
                self._stop(StopRun(f"the API refused the token ({failure})"))
            if failure.retry and attempt <= self.retries:
                await asyncio.sleep(self._backoff(attempt, response.retry_after))
                continue
            raise UploadFailed(failure)
