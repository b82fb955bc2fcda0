"""The executor: sends every recipient's messages, at most once each, and records what happened.

Recipients stream from the plan to a bounded window of servers, each recipient's steps strictly
in order and spaced by the per-recipient interval (a failed step stops the later ones). Requests
take one of `concurrency` slots. Before a request leaves, its `sending` mark is committed
together with the outcomes finished so far (ledger/batcher.py: one commit for everyone waiting); a
message waiting to be retried gives its slot back and is recorded `failed` until its next
attempt. So after a hard kill at most `concurrency` rows are left `sending`, and the next run
reports them as `uncertain` instead of sending them again.

What counts as done: `sent`. A step skipped by `when`, or blocked by a failed step, is looked at
again on the next run (nothing was sent, so nothing can be sent twice), as is one the run's own
problem kept from the API (its credentials refused, its file's upload failed: skipped, `not
sent`). `failed` (the API refused the message itself) and `uncertain` are retried only with
--retry-failed / --retry-uncertain.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import hashlib
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from . import clock
from .contacts import Contact, Keywords
from .conversation import (
    WAITS_ANSWER,
    WAITS_EVENT,
    WAITS_QUIET,
    WAITS_TIME,
    WAITS_WINDOW,
    Window,
    classify,
    closed_at,
    latest,
    ledger_time,
)
from .dialect import ApiFailure, Dialect, LoginFailed, Verdict
from .durations import said
from .errors import FlowrunError
from .ledger import (
    GroupCommit,
    Inbound,
    LedgerError,
    Outcome,
    Preference,
    RunLedger,
    State,
    StepRecord,
    now,
)
from .media import LocalMedia, MediaError, read_checked
from .pacing import Pacer, Ticker
from .plan import Plan
from .progress import Progress
from .quiet_hours import opening
from .recipients import Recipient
from .render import Item, Message, Renderer, RenderFailure, Skipped, Waiting
from .timeline import DECIDED, EXPIRED, FINAL_TITLES, Timeline
from .transport import MaybeDelivered, NotDelivered, Response, Transport

BACKOFF_BASE = 0.5  # seconds; doubled per attempt, with full jitter
BACKOFF_MAX = 30.0
PAIR_BACKOFF = 6.0  # seconds, doubled per attempt: one recipient messaged too often (131056)
WINDOW_MAX = 20_000  # recipients in progress at once, at most
RETRY_AFTER_MAX = 300.0
FAILURE_STREAK_LIMIT = 100  # this many failures in a row pause the campaign
# Cloud's spam rate limit (131048): everyone waits this long and the rate halves; at this many
# such refusals in a run it stops (more messages now would only lower the number's quality).
SPAM_PAUSE = 60.0
SPAM_STOP_AFTER = 3
ON_TIME = 0.001  # seconds: a pacing slot this close is now (not worth a tick's wait)
FOLLOW_POLL = 0.25  # seconds between two looks at the ledger for customers' new messages
# Recipients claimed at once from a ledger other runs may share (ledger/postgres.py): one query
# per batch; a runner killed leaves at most this many (and those in progress) to take over.
CLAIM_BATCH = 200
TAKE_OVER_EVERY = 10.0  # seconds between two looks, while following, for a dead run's recipients
SHARE_EVERY = 2.0  # seconds between two counts of the runs sharing the flow's rate
LOOK_BACK = timedelta(seconds=5)  # a receiver's row may commit after a later-stamped one
# The reasons a step is not sent yet, or no more (the ledger's error_title of its row)
WINDOW_WAIT = WAITS_WINDOW  # waits for the customer to write: their window is closed
ANSWER = WAITS_ANSWER  # its `when` reads an answer to an earlier step, not given yet
NOT_SENT = "not sent"  # the run's own problem kept it from the API (credentials, an upload)


class _Go(enum.Enum):
    """What the ledger says of a step before it is looked at (Executor._settled)."""

    NEXT = "next"  # settled: on to the recipient's next step
    STOP = "stop"  # the recipient's later steps wait (held behind a failure, in flight)
    DECIDE = "decide"  # nothing decided yet: send it, or wait


class _Retry(enum.Enum):
    RETRY = "retry"


_RETRY = _Retry.RETRY  # Executor._settle: try again after a wait


class UploadFailed(Exception):
    def __init__(self, failure: ApiFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class UploadInterrupted(Exception):
    """The run stopped while an upload waited for its next try."""


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
    rate: float | None = None  # messages/s for the whole run
    interval: float = 0.0  # seconds between two messages to one recipient
    follow: bool = False  # after the pass, serve waiting recipients again as they write


@dataclass
class Summary:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0
    blocked: int = 0
    opted_out: int = 0  # not sent: the customer asked to stop
    later: int = 0  # failed ones --retry-failed may not send yet (131049: a day)
    later_until: str = ""  # the latest time one of those may go
    never: int = 0  # failed ones the API will never take (130472)
    spam: int = 0  # refusals for the number's spam rate limit (131048)
    unusable: dict[str, int] = field(default_factory=dict)  # step → withheld: its template
    waiting: dict[str, int] = field(default_factory=dict)  # reason → steps waiting for it
    expired: int = 0  # skipped: they waited `expires` in vain
    refused_window: int = 0  # of the waiting: the API refused them for a closed window
    next_due: datetime | None = None  # the earliest time a waiting step becomes due
    gives_up: datetime | None = None  # the earliest time a wait for a customer expires
    trusted_window: bool = False  # settings.window: open
    already: int = 0  # sent by an earlier run
    changed: int = 0  # of those, how many the flow now words differently
    held: int = 0  # failed/uncertain from an earlier run, not retried
    unsent: int = 0  # refused, then the run stopped before the retry: the next run sends them
    # not sent: their upload failed (reason → messages); the next run sends them
    upload_failed: dict[str, int] = field(default_factory=dict)
    uploads: int = 0
    recovered: int = 0  # `sending` rows of a dead run, now uncertain
    elsewhere: int = 0  # recipients another run served at the same time (a shared ledger)
    taken_over: int = 0  # recipients of a run that ended before getting through them
    throttled: int = 0  # times the API asked the whole run to slow down
    logins: int = 0  # On-Premises logins, the first included
    interrupted: bool = False
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed or self.uncertain or self.held or self.upload_failed else 0


def encode(body: dict[str, Any]) -> bytes:
    """A request body as sent: compact UTF-8 JSON with sorted keys, so that its hash is the
    same whatever order the body was built in."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def body_hash(raw: bytes) -> str:
    """A short hash of an encoded body, stored with each message: it tells whether a step was
    edited after it was sent."""
    return hashlib.sha256(raw).hexdigest()[:16]


def _outcome(message: Message, state: State, **fields: Any) -> Outcome:
    return Outcome(message.step.key, message.recipient.phone, state, **fields)


@dataclass
class _Sending:
    """One message's way through its attempts."""

    media_id: str | None = None
    attempt: int = 0
    reuploaded: bool = False
    login: int = 0  # the login generation its last request went with


class Executor:
    def __init__(
        self,
        plan: Plan,
        *,
        transport: Transport,
        dialect: Dialect,
        ledger: RunLedger,
        options: RunOptions,
        progress: Progress,
    ) -> None:
        self.plan = plan
        self.renderer = Renderer(plan)
        self.transport = transport
        self.dialect = dialect
        self.ledger = ledger
        self.options = options
        self.progress = progress
        self.summary = Summary()
        self.commits: GroupCommit
        self.retries = plan.flow.settings.retries
        self.pacer = Pacer(options.rate)
        self.ticker = Ticker()
        self.slots = asyncio.Semaphore(options.concurrency)
        self._media: dict[str, asyncio.Task[str]] = {}
        # (step, template, language) → the API's word that the template cannot be used
        self._unusable: dict[tuple[str, str, str], ApiFailure] = {}
        self._stopping = False
        self._stop_error: BaseException | None = None
        self._streak = 0
        self._login_lock = asyncio.Lock()
        self._login_generation = 0
        self._fresh_login = False  # logged in again, and nothing went through since
        self._history = ledger.has_rows()
        settings = plan.flow.settings
        self._words = Keywords.from_settings(settings.opt_out_keywords, settings.resume_keywords)
        # Nobody of this number's customers wrote: no query per recipient for their history
        self._heard = ledger.has_heard(dialect.business)
        self._trust_window = settings.window == "open"
        self._quiet = opening(settings.send_between, settings.timezone)
        # --follow: who waits (phone → recipient, when the wait expires)
        self._waiting: dict[str, tuple[Recipient, datetime]] = {}
        self._waits: dict[str, str] = {}  # phone → what their waiting step waits for, now
        self._following = False  # past the first pass of a --follow run
        self._got_through: list[str] = []  # served since the last claim: the ledger is told
        # orphans of ended runs looked for already: (phone, the run that held them)
        self._looked_for: set[tuple[str, int]] = set()
        self.summary.trusted_window = self._trust_window

    def window(self) -> int:
        """Recipients in progress at once: enough to keep every slot busy while others wait
        out their per-recipient interval (rate × interval of them are waiting at any time)."""
        waiting = 0
        if self.options.interval and len(self.plan.steps) > 1:
            rate = self.options.rate or 1000.0
            waiting = int(rate * self.options.interval) + 1
        return min(WINDOW_MAX, self.options.concurrency * 2 + waiting)

    async def run(self) -> Summary:
        started = time.monotonic()
        _started = clock.now()
        self.summary.recovered = self.ledger.recover()
        self.commits = await GroupCommit.start(
            self.ledger.location, self.ledger.flow, self.ledger.runner
        )
        self._install_signals()
        shared = self.ledger.runner is not None
        sharing = asyncio.create_task(self._share_rate()) if shared else None
        try:
            await self._login()
            await self._serve_all(self._claimed(self._recipients()))
            await self._take_over()
            if self.options.follow and not self._stopping:
                await self._follow(_started)
        finally:
            if sharing is not None:
                sharing.cancel()
            self.ticker.close()
            try:
                await self.commits.close()
            finally:
                self._tell_served()
                self._remove_signals()
            self.summary.seconds = time.monotonic() - started
            self.summary.waiting = dict(collections.Counter(self._waits.values()))
            self.summary.throttled = self.pacer.throttles
        if self._stop_error is not None:
            raise self._stop_error
        return self.summary

    async def _serve_all(self, recipients: Iterator[tuple[Recipient, bool]]) -> None:
        """`window()` servers, each taking the next recipient from one shared stream until it
        runs dry: at most that many recipients in progress, and no task per recipient."""

        async def server() -> None:
            for recipient, new in recipients:  # next() never awaits: safe to share
                if self._stopping:
                    return
                await self._guarded(recipient, new)

        await asyncio.gather(*(server() for _ in range(self.window())))

    def _claimed(
        self, recipients: Iterator[Recipient], *, taking_over: bool = False
    ) -> Iterator[tuple[Recipient, bool]]:
        """The recipients this run serves, with whether nobody ever claimed them (nothing of
        theirs is on record): claimed from the ledger CLAIM_BATCH at a time, since other runs
        of the flow may share it and serve the rest (ledger/postgres.py)."""
        batch: list[Recipient] = []
        for recipient in recipients:
            batch.append(recipient)
            if len(batch) == CLAIM_BATCH:
                yield from self._claim(batch, taking_over)
                batch = []
        if batch:
            yield from self._claim(batch, taking_over)

    def _claim(self, batch: list[Recipient], taking_over: bool) -> Iterator[tuple[Recipient, bool]]:
        self._tell_served()
        mine = self.ledger.claim([recipient.phone for recipient in batch])
        for recipient in batch:
            new = mine.get(recipient.phone)
            if new is not None:
                self.summary.taken_over += taking_over
                yield recipient, new
            elif not taking_over:
                self.summary.elsewhere += 1  # a live run of the flow serves them

    async def _share_rate(self) -> None:
        """The flow's rate is the phone number's, whichever run sends: with other runs of the
        flow going (a shared ledger), this one keeps its part of it, counted anew every
        SHARE_EVERY seconds as runs start and end."""
        while True:
            try:
                self.pacer.share(self.ledger.running())
            except LedgerError as exc:  # the database is gone: the run stops, as on a commit
                self._stop(exc)
                return
            await asyncio.sleep(SHARE_EVERY)

    def _tell_served(self) -> None:
        """Tell the ledger who got through, so that nobody takes them over should this run
        die. A hint: a recipient taken over needlessly only costs a look at their rows, so a
        ledger that cannot take it now is no reason to stop the run."""
        if self._got_through:
            got_through, self._got_through = self._got_through, []
            with contextlib.suppress(LedgerError):
                self.ledger.served(got_through)

    async def _take_over(self) -> None:
        """Serve the recipients of runs of the flow that ended (killed, stopped) before they
        got through them, so that the campaign finishes with the runs still going. Their
        in-flight messages are uncertain, as after any crash. Each orphan is looked for once:
        one that is not this run's (another CSV, --only) costs no pass over the CSV again.
        A ledger no other run shares (a file: `runner` None) has nothing to take over, and
        its `recover` would take this run's own marks for a dead run's."""
        if self._stopping or self.ledger.runner is None:
            return
        self.summary.recovered += self.ledger.recover()
        found = self.ledger.orphans() - self._looked_for
        if not found:
            return
        self._looked_for |= found
        orphans = {phone for phone, _held_by in found}
        self._history = True  # another run wrote rows of theirs
        self.progress.line(
            f"flowrun: {len(orphans):,} recipient(s) of a run that ended before it got through"
            " them: this run serves those that are its own"
        )
        # claimed as in the pass: only this run's recipients (its CSV, --only, --limit), and
        # only those no live run has claimed meanwhile
        left = (recipient for recipient in self._recipients() if recipient.phone in orphans)
        await self._serve_all(self._claimed(left, taking_over=True))

    async def _follow(self, since: datetime) -> None:
        """`--follow`: after the pass, serve a waiting recipient again as soon as they write
        (the receiver records it: `--listen`, or a `flowrun listen` on the same ledger) or
        their wait expires; until nothing waits, or Ctrl-C."""
        self._history = True  # this run wrote rows: always read them now
        self._following = True
        self.ledger.following()  # (it leaves the flow's rate to runs still in their pass)
        arrivals = _Arrivals(since - LOOK_BACK)
        statuses = _Arrivals(since - LOOK_BACK)  # a read wakes a step waiting for it
        serving: dict[str, asyncio.Task[None]] = {}
        due: set[str] = set()  # to serve again as soon as they are not being served
        self.progress.line(
            f"flowrun: following {len(self._waiting):,} recipient(s) who wait; Ctrl-C stops"
        )
        look_again = time.monotonic() + TAKE_OVER_EVERY
        while (self._waiting or serving) and await self._pause(FOLLOW_POLL):
            if time.monotonic() >= look_again:  # a follower beside this one may have died
                await self._take_over()
                look_again = time.monotonic() + TAKE_OVER_EVERY
            due |= self._expired_waits()
            new = arrivals.new(self.ledger.inbound_since(self.dialect.business, arrivals.since))
            if new:
                self._heard = True
                due |= new
            due |= statuses.new(self.ledger.statuses_since(statuses.since))
            for phone in [p for p in due if p not in serving]:
                due.discard(phone)  # (one who wrote while served is served once more)
                if phone in self._waiting:
                    serving[phone] = asyncio.create_task(self._again(phone, serving))
        if serving:
            await asyncio.gather(*serving.values())

    def _expired_waits(self) -> set[str]:
        now_ = clock.now()
        return {phone for phone, (_, deadline) in self._waiting.items() if deadline <= now_}

    async def _again(self, phone: str, serving: dict[str, asyncio.Task[None]]) -> None:
        """Serve one waiting recipient again, once the ledger holds all this run did (one
        recipient is never served twice at once: `serving`)."""
        try:
            recipient, _ = self._waiting.pop(phone)
            await self.commits.flush()
            await self._guarded(recipient, False)
        finally:
            serving.pop(phone, None)

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
        self.ticker.stop()
        self.progress.line(
            "flowrun: stopping: no new messages; waiting for those in flight "
            "(Ctrl-C again to stop at once)"
        )

    async def _guarded(self, recipient: Recipient, new: bool) -> None:
        """Serve one recipient (`new`: nobody ever claimed them, so nothing of theirs is on
        record); an error stops the run (raised once everything in progress has drained and
        the ledger is written). With --follow, one who waits is kept."""
        try:
            deadline = await self._serve(recipient, new)
        except Exception as exc:
            self._stop(exc)
            return
        if deadline is not None and self.options.follow:
            self._waiting[recipient.phone] = (recipient, deadline)
        elif deadline is None and not self._stopping:
            # (one who waits is not through: a follower beside this run takes them over
            # once it ends, and serves them as they write)
            self._got_through.append(recipient.phone)

    async def _serve(self, recipient: Recipient, new: bool = False) -> datetime | None:
        """Send this recipient's due steps, in order; when one must wait (for the customer to
        write, or to answer), when that wait expires (`--follow` serves them again then, or
        when they write)."""
        self._waits.pop(recipient.phone, None)  # served again: waits anew, or no more
        # A ledger that held nothing of this flow when the run began has nothing on anyone
        # nobody claimed before: the first run of a campaign skips a query per recipient.
        known = self._history or not new
        history = self.ledger.history(recipient.phone) if known else {}
        contact, inbound = self._contact(recipient)
        window = Window(
            latest(ledger_time(contact.wrote), recipient.wrote),
            self._trust_window,
            *closed_at(history.values(), self.dialect.window_closed),
        )
        line = Timeline(recipient, self.plan.steps, history, inbound, window, clock.now())
        items = _rendered(
            self.renderer.messages(recipient, line.answer, gate=line.gate, contact=line.contact())
        )
        last_request: float | None = None
        for item in items:
            if self._stopping:
                return None
            settled = self._settled(item, history.get(item.step.key), contact)
            if settled is _Go.NEXT:
                continue
            if settled is _Go.STOP:
                return None
            assert not isinstance(item, Skipped)  # _settled recorded it
            due = self._held(item, line)
            if isinstance(due, Waiting):
                deadline = self._wait(due, line)
                if deadline is None:
                    continue  # expired: skipped, and the flow goes on
                return deadline
            if last_request is not None and not await self._pause(
                last_request + self.options.interval - time.monotonic()
            ):
                return None  # stopping: the later steps are sent by the next run
            sent = await self._send(due)
            last_request = time.monotonic()
            if not sent:
                return self._unsent(sent, due, items, line)
            line.sent(item.step.key, now())
        return None

    def _held(self, item: Message | Waiting, line: Timeline) -> Message | Waiting:
        """A step that is reached, or what it waits for: its `after:` or an answer (render
        said so), the customer's window, or the recipient's quiet hours."""
        if isinstance(item, Waiting):
            return item
        if classify(item.step.free_form, line.window, line.now) is not None:
            return Waiting(item.recipient, item.step, None, WAITS_WINDOW)
        if self._quiet is not None:
            opens = self._quiet(item.recipient.phone, item.recipient.zone, line.now)
            if opens is not None:
                return Waiting(item.recipient, item.step, None, WAITS_QUIET, until=opens)
        return item

    def _unsent(
        self, sent: bool | None, item: Message, later: Iterator[Item], line: Timeline
    ) -> datetime | None:
        """After a message that did not go: None, the run stops (the rest goes next run), or
        the API said the window is closed (the step waits: when that wait expires); False, it
        failed (the recipient's later steps are blocked)."""
        if sent is None:
            return None if self._stopping else line.deadline(item.step)
        self._block_rest(later, item, item.recipient)
        return None

    def _settled(self, item: Item, record: StepRecord | None, contact: Contact) -> _Go:
        """What the ledger and the customer decided of this step before it is looked at:
        sent already, withheld (they asked to stop), held behind a failure, skipped by
        `when` (recorded here), or nothing yet."""
        phone = item.recipient.phone
        state = record.state if record is not None else None
        if record is not None and self._done(item, record):
            return _Go.NEXT
        if state == "sending":
            return _Go.STOP  # in flight in this run (a --follow run serves a recipient again)
        refused = contact.refusal(item.step.kind == "template")
        if refused is not None and state != "uncertain":  # (what may have arrived stays so)
            self.commits.record(_skipped(item.step.key, phone, "opted out", refused))
            self.summary.opted_out += 1
            return _Go.NEXT  # every path: a failed one is not retried either
        if (state == "failed" and not self._may_resend(item, item.recipient)) or (
            state == "uncertain" and not self.options.retry_uncertain
        ):
            self.summary.held += 1
            return _Go.STOP  # later steps wait until this one is settled
        if isinstance(item, Skipped):
            title = DECIDED if item.final else "when"
            self.commits.record(_skipped(item.step.key, phone, title, item.reason))
            self.summary.skipped += 1
            return _Go.NEXT
        return _Go.DECIDE

    def _done(self, item: Item, record: StepRecord) -> bool:
        """Sent before (and not refused afterwards for a closed window), or expired: final
        (sent later, an expired step would come after the steps that followed it)."""
        if record.state == "sent" and not self._refused_for_window(record):
            if not self._following:  # (a --follow serve meets what this run sent)
                self.summary.already += 1
                self.summary.changed += self._edited(item, record)
            return True
        return record.state == "skipped" and record.error_title in FINAL_TITLES

    def _wait(self, item: Waiting, line: Timeline) -> datetime | None:
        """The step cannot go yet: recorded as waiting, with its reason (once: a run that
        finds it waiting already writes nothing), or skipped when it waited for the customer
        long enough. When to look at it again (`--follow`), or None if it just expired."""
        step, phone, title, until = item.step, item.recipient.phone, item.reason, item.until
        deadline = until or line.deadline(step)
        if until is None and line.now >= deadline:
            why = f"waited {said(step.expires)} for {_awaited(item)}, in vain"
            self.commits.record(_skipped(step.key, phone, EXPIRED, why))
            self.summary.expired += 1
            return None
        self._waits[phone] = title
        if until is not None:
            self.summary.next_due = min(filter(None, (self.summary.next_due, until)))
        else:  # a wait for the customer: when it gives up, the flow goes on
            self.summary.gives_up = min(filter(None, (self.summary.gives_up, deadline)))
        record = line.history.get(step.key)
        if record is None or record.state != "waiting" or record.error_title != title:
            ends = f"until {_stamp(until)}" if until else f"expires {_stamp(deadline)}"
            why = f"waits for {_awaited(item)}; {ends}"
            # the API's refusal stays on record: a window the flow trusts is closed for them
            code = line.window.code if title == WINDOW_WAIT else None
            self.commits.record(_waiting(step.key, phone, title, why, code))
        return deadline

    def _refused_for_window(self, record: StepRecord | None) -> bool:
        """A message the API took (200) and then failed for a closed window (131047 comes
        that way): never delivered, so it waits for the window and goes again."""
        return (
            record is not None
            and record.delivery == "failed"
            and self.dialect.window_closed(record.delivery_code)
        )

    def _may_resend(self, item: Item, recipient: Recipient) -> bool:
        """A failed message is sent again only with --retry-failed, and not before its
        refusal allows (the dialect says how long: a day, or never)."""
        if not self.options.retry_failed:
            return False
        code, last = self.ledger.failure_of(item.step.key, recipient.phone)
        wait = self.dialect.resend_wait(code)
        if wait is None:
            return True
        if wait == timedelta.max:
            self.summary.never += 1
            return False
        until = _parsed(last) + wait
        if clock.now() >= until:
            return True
        self.summary.later += 1
        self.summary.later_until = max(self.summary.later_until, until.isoformat("T", "minutes"))
        return False

    def _contact(self, recipient: Recipient) -> tuple[Contact, list[Inbound]]:
        """What this customer said that bears on sending (a stop word, a marketing stop, when
        they last wrote), and their messages (oldest first: answers are read from them)."""
        if not self._heard:
            return NOBODY_SAID, []
        inbound, preferences = self.ledger.heard_from(self.dialect.business, recipient.phone)
        return Contact.of(inbound, preferences, self._words), inbound

    def _edited(self, item: Item, record: StepRecord | None) -> bool:
        """Whether a message sent before reads differently now (uploads aside: their body
        holds a media id only known after upload)."""
        sent_hash = record.body_hash if record is not None else None
        if not isinstance(item, Message) or item.upload is not None or not sent_hash:
            return False
        return body_hash(encode(item.body(self.dialect))) != sent_hash

    def _block_rest(self, later: Iterator[Item], failed: Message, who: Recipient) -> None:
        why = f"step {failed.step.key} did not go through"
        for item in later:
            self.commits.record(_skipped(item.step.key, who.phone, "blocked", why))
            self.summary.blocked += 1

    async def _pause(self, seconds: float) -> bool:
        """Wait, unless the run stops first; whether the run goes on."""
        return await self._until(time.monotonic() + seconds)

    async def _until(self, when: float) -> bool:
        """Wait until `when` (time.monotonic()), unless the run stops first; whether the run
        goes on. The ticker ends it (pacing.Ticker: one timer for all waits due together)."""
        if not self._stopping and when > time.monotonic():
            await self.ticker.at(when)
        return not self._stopping

    async def _send(self, message: Message) -> bool | None:
        """Send one message, retrying as its failures allow: whether it was sent; None when
        the run stopped before it could be (nothing is on record as in flight), or the API
        said the customer's window is closed (the step waits)."""
        state = _Sending()
        try:
            if message.upload is not None:
                state.media_id = await self._media_id(message.upload)
            return await self._attempts(message, state)
        except UploadFailed as exc:
            return self._upload_failed(message, exc.failure)
        except UploadInterrupted:
            return None

    async def _attempts(self, message: Message, state: _Sending) -> bool | None:
        while True:
            async with self.slots:
                unusable = self._unusable.get(_template_of(message)) if self._unusable else None
                if unusable is not None:  # (checked in the slot: only those in flight ask)
                    return self._withheld(message, unusable)
                state.attempt += 1
                outcome = await self._try_once(message, state)
                # Refused before it was taken (a new login or upload repairs that): sent
                # again at once, in the same slot, so its mark never outnumbers the slots.
                while isinstance(outcome, ApiFailure) and await self._repair(
                    message, outcome, state
                ):
                    state.attempt += 1
                    outcome = await self._try_once(message, state)
                if not isinstance(outcome, ApiFailure):
                    return outcome
                failure = outcome
                settled = self._settle(message, failure, state.attempt)
                if settled is not _RETRY:
                    return settled
            if not await self._wait_to_retry(failure, state.attempt):
                self._interrupted(message)
                return None

    def _settle(self, message: Message, failure: ApiFailure, attempt: int) -> bool | _Retry | None:
        """What a refusal means for this message: settled (whether it counts as sent: False;
        None: it waits for the customer's window), or _RETRY after a wait (on record as failed
        until then)."""
        if failure.verdict is Verdict.WINDOW_CLOSED:
            self._window_refused(message, failure)
            return None
        if failure.verdict is Verdict.MARKETING_STOPPED:
            return self._marketing_stopped(message, failure)
        if failure.verdict is Verdict.TEMPLATE_UNUSABLE:
            self._unusable.setdefault(_template_of(message), failure)
        if failure.verdict is Verdict.SPAM_LIMIT:
            self.summary.spam += 1
            if self.summary.spam >= SPAM_STOP_AFTER:
                self._stop(StopRun(_spam_message(failure, self.summary.spam)))
                return self._failed(message, failure, 1)
        if failure.verdict is Verdict.AUTH:  # (a new login did not help)
            self._credentials_refused(message, failure)
            return None
        if not failure.retry or attempt > self.retries:
            return self._failed(message, failure, 1)
        # Waiting for the next attempt: the slot goes back, and the message is on record as
        # failed (the API refused it) until its next mark.
        self.commits.record(_failure_outcome(message, failure, 1))
        return _RETRY

    async def _try_once(self, message: Message, state: _Sending) -> bool | ApiFailure | None:
        """Pace, mark, send (holding a slot): True sent, False uncertain, None stopping, or
        the API's failure."""
        # Paced before the mark: a message held back by the rate is not in flight. Waiting in
        # ticks, the messages due in one wake together, and their marks share a commit.
        if not await self._until(self.pacer.take() - ON_TIME):
            if state.attempt > 1:  # on record as failed from the attempt before
                self._interrupted(message)
            return None
        raw = encode(message.body(self.dialect, state.media_id))
        await self.commits.mark(message.step.key, message.recipient.phone, body_hash(raw))
        state.login = self._login_generation
        return await self._attempt(message, raw, state.attempt)

    async def _repair(self, message: Message, failure: ApiFailure, state: _Sending) -> bool:
        """Failures one action repairs: a refused token (log in again), an expired media id
        (upload again, once). Whether to send again at once."""
        if failure.verdict is Verdict.AUTH:
            return await self._login_again(state.login)
        if failure.verdict is Verdict.MEDIA_GONE and message.upload and not state.reuploaded:
            state.reuploaded = True
            state.media_id = await self._upload_again(message.upload, state.media_id)
            return True
        return False

    async def _attempt(self, message: Message, body: bytes, attempt: int) -> bool | ApiFailure:
        """One request for a marked message: True sent, False uncertain (recorded), or the
        API's failure for `_send` to decide on."""
        path = self.dialect.path_for(message.step.kind, message.content)  # (marketing API?)
        try:
            response = await self.transport.post_json(path, body)
        except NotDelivered as exc:  # never reached the API: always safe to try again
            return ApiFailure(0, None, "not delivered", str(exc), Verdict.RETRY)
        except MaybeDelivered as exc:  # the API may have it: never sent again blindly
            self.commits.record(_outcome(message, "uncertain", error_details=str(exc)))
            self.summary.uncertain += 1
            self.progress.update(self.summary)
            return False
        if 200 <= response.status < 300:
            return self._sent(message, response)
        return self._refusal(response)

    def _refusal(self, response: Response) -> ApiFailure:
        """What the API's refusal means; a Retry-After it gave replaces the back-off."""
        failure = self.dialect.failure(response.status, response.data)
        if response.retry_after is not None and failure.retry:
            return dataclasses.replace(failure, retry_after=response.retry_after)
        return failure

    def _sent(self, message: Message, response: Response) -> bool:
        self.commits.record(
            _outcome(
                message,
                "sent",
                message_id=self.dialect.message_id(response.data),
                http_status=response.status,
            )
        )
        self.summary.sent += 1
        self._streak = 0
        self._fresh_login = False
        self.progress.update(self.summary)
        return True

    async def _wait_to_retry(self, failure: ApiFailure, attempt: int) -> bool:
        """Wait before the next try (the whole run slows down too, if the API said it was
        too fast); whether the run goes on."""
        delay = self._retry_delay(failure, attempt)
        if failure.verdict is Verdict.SPAM_LIMIT:
            delay = max(delay, SPAM_PAUSE)
        if failure.verdict in (Verdict.THROTTLED, Verdict.SPAM_LIMIT):
            self.pacer.throttled(delay)
        return await self._pause(delay)

    def _retry_delay(self, failure: ApiFailure, attempt: int) -> float:
        if failure.retry_after is not None:
            return min(failure.retry_after, RETRY_AFTER_MAX)
        if failure.verdict is Verdict.PAIR_RATE:
            base = max(self.options.interval, PAIR_BACKOFF) * 2 ** (attempt - 1)
            return random.uniform(base, base * 1.5)  # at least `base`: the limit is real
        return random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)))

    def _interrupted(self, message: Message) -> None:
        """Ctrl-C while a message waited for a retry: it was not accepted, so it is recorded
        as skipped ('interrupted') and the next run sends it."""
        self.commits.record(
            _skipped(
                message.step.key,
                message.recipient.phone,
                "interrupted",
                "the run stopped before a retry",
            )
        )
        self.summary.unsent += 1

    def _credentials_refused(self, message: Message, failure: ApiFailure) -> None:
        """The API refused the run's credentials, not this message (each message in flight
        when they were refused hears the same): the run stops, and the message is recorded
        as skipped ('not sent'), so the next run, with the credentials fixed, sends it
        without --retry-failed. None: the run stops, the recipient's later steps go next
        run too."""
        self._stop(StopRun(_auth_message(failure, self.dialect)))
        why = f"the API refused the run's credentials ({failure}); the next run sends it"
        self.commits.record(
            _skipped(message.step.key, message.recipient.phone, NOT_SENT, why),
        )

    def _upload_failed(self, message: Message, failure: ApiFailure) -> bool | None:
        """The message's file could not be uploaded: the message never reached the API, so
        it is not failed but skipped ('not sent'), and the next run sends it (a failure of
        the file itself, or of the API's media endpoint, says nothing about the recipient).
        False: the recipient's later steps wait behind it (recorded as blocked); None when
        the run stops (its credentials were refused while uploading)."""
        assert message.upload is not None
        reason = (
            f"the upload of {message.upload.relative or message.upload.path} failed ({failure})"
        )
        self.commits.record(
            _skipped(message.step.key, message.recipient.phone, NOT_SENT, reason),
        )
        failed = self.summary.upload_failed
        failed[reason] = failed.get(reason, 0) + 1
        self.progress.update(self.summary)
        if self._stopping:
            return None
        self._count_failure(failure)  # a file that never uploads pauses the run, as failures
        return False

    def _window_refused(self, message: Message, failure: ApiFailure) -> None:
        """The API says the customer's window is closed (whatever the ledger, the CSV or the
        flow's `window: open` said): the step waits for them to write. The refusal's code on
        the row tells later runs the window was closed then (conversation.closed_at)."""
        why = f"the API answered {failure}: waits for the customer to write"
        waiting = _waiting(
            message.step.key, message.recipient.phone, WINDOW_WAIT, why, failure.code
        )
        self.commits.record(dataclasses.replace(waiting, http_status=failure.http_status or None))
        self.summary.refused_window += 1
        self._waits[message.recipient.phone] = WINDOW_WAIT
        self.progress.update(self.summary)

    def _withheld(self, message: Message, failure: ApiFailure) -> bool:
        """The step's template (in this language) cannot be used: the API said so for one of
        its messages, and would say it for every other. Not sent, looked at again next run."""
        why = f"the template cannot be used: {failure}"
        self.commits.record(_skipped(message.step.key, message.recipient.phone, "template", why))
        unusable = self.summary.unusable
        unusable[message.step.key] = unusable.get(message.step.key, 0) + 1
        return False  # the recipient's later steps wait behind it, as behind a failure

    def _marketing_stopped(self, message: Message, failure: ApiFailure) -> bool:
        """The API says the customer stopped marketing messages: what they asked for is
        honoured, not a failure. Recorded as a preference, so that no later run sends them a
        template before they resume; the step is skipped (the recipient's free-form steps go on,
        as they may)."""
        customer = message.recipient.phone
        now = clock.now().isoformat(timespec="seconds")
        self.commits.record(Preference(self.dialect.business, customer, now, "stop"))
        why = f"the API answered {failure}"
        self.commits.record(_skipped(message.step.key, customer, "opted out", why))
        self.summary.opted_out += 1
        self.progress.update(self.summary)
        return True

    def _failed(self, message: Message, failure: ApiFailure, attempts: int) -> bool:
        self.commits.record(_failure_outcome(message, failure, attempts))
        self.summary.failed += 1
        reason = str(failure) + (f" — {failure.hint}" if failure.hint else "")
        self.summary.failures[reason] = self.summary.failures.get(reason, 0) + 1
        self._count_failure(failure)
        self.progress.update(self.summary)
        return False

    def _count_failure(self, failure: ApiFailure) -> None:
        """One more message in a row that did not go: at FAILURE_STREAK_LIMIT, the run stops."""
        self._streak += 1
        if self._streak >= FAILURE_STREAK_LIMIT:
            self._stop(
                StopRun(
                    f"{self._streak} messages in a row failed (the last: {failure}); the run is "
                    "paused: fix the cause and run again to continue"
                )
            )

    def _stop(self, error: BaseException) -> None:
        if self._stop_error is None:
            self._stop_error = error
        self._stopping = True
        self.ticker.stop()

    async def _login(self) -> None:
        """Log in before the first message, for dialects that do (On-Premises `login:`)."""
        try:
            token = await self.dialect.login(self.transport)
        except LoginFailed as exc:
            raise StopRun(f"{exc}; check api.login in the flow") from None
        if token is not None:
            self.transport.use_token(token)
            self.summary.logins += 1

    async def _login_again(self, generation: int) -> bool:
        """After a 401: log in once more (if the dialect can), then send again. Several
        messages refused at once share one login; a 401 right after a fresh login gives up."""
        async with self._login_lock:
            if generation != self._login_generation:
                return True  # another message logged in meanwhile
            if self._fresh_login:
                return False
            try:
                token = await self.dialect.login(self.transport)
            except LoginFailed:
                return False
            if token is None:
                return False
            self.transport.use_token(token)
            self.summary.logins += 1
            self._login_generation += 1
            self._fresh_login = True
            return True

    async def _media_id(self, media: LocalMedia) -> str:
        """The media id of a local file: from the ledger, or uploaded once for everyone."""
        task = self._media.get(media.sha256)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # not tried yet, or the last try failed: this message tries again
            task = asyncio.create_task(self._upload(media, cached=True))
            self._media[media.sha256] = task
        return await task

    async def _upload_again(self, media: LocalMedia, dead: str | None) -> str:
        """The API no longer knows `dead` (expired): upload once more, one upload shared by
        every message that meets the same dead id."""
        task = self._media[media.sha256]
        finished = task.done() and not task.cancelled() and task.exception() is None
        if finished and task.result() == dead:  # else: uploading again already, or done
            task = asyncio.create_task(self._upload(media, cached=False))
            self._media[media.sha256] = task
        return await task

    async def _upload(self, media: LocalMedia, *, cached: bool) -> str:
        if cached:
            known = self.ledger.media_id(
                self.dialect.upload_key, media.sha256, self.dialect.media_ttl
            )
            if known is not None:
                return known
        try:
            data = await asyncio.to_thread(read_checked, media)
        except MediaError as exc:
            raise UploadFailed(ApiFailure(0, None, "file changed", str(exc))) from None
        request = self.dialect.upload(media, data)
        attempt = 0
        while True:
            attempt += 1
            login = self._login_generation
            try:
                response = await self.transport.upload(request)
            except (NotDelivered, MaybeDelivered) as exc:
                # An upload is safe to repeat: a second copy only costs storage.
                if attempt > self.retries:
                    raise UploadFailed(ApiFailure(0, None, "upload failed", str(exc))) from None
                await self._upload_pause(ApiFailure(0, None, None, None), attempt)
                continue
            found = self.dialect.media_id(response.data) if response.status < 300 else None
            if found is not None:
                await self.commits.remember_upload(self.dialect.upload_key, media.sha256, found)
                self.summary.uploads += 1
                return found
            failure = self._refusal(response)
            if failure.verdict is Verdict.AUTH:
                if await self._login_again(login):
                    continue
                self._stop(StopRun(_auth_message(failure, self.dialect)))
            elif failure.retry and attempt <= self.retries:
                await self._upload_pause(failure, attempt)
                continue
            raise UploadFailed(failure)

    async def _upload_pause(self, failure: ApiFailure, attempt: int) -> None:
        """Wait before an upload's next try; raises UploadInterrupted when the run stops."""
        if not await self._wait_to_retry(failure, attempt):
            raise UploadInterrupted


NOBODY_SAID = Contact()


class _Arrivals:
    """The customer messages `--follow` has not seen yet, read by arrival time. A receiver's
    row may commit after one stamped later (its time is taken before its commit), so each
    look goes LOOK_BACK into the past, and ids already seen there are skipped."""

    def __init__(self, since: datetime) -> None:
        self._cursor = since
        self._seen: dict[str, datetime] = {}  # message id → arrival, within LOOK_BACK

    @property
    def since(self) -> str:
        return self._cursor.isoformat(timespec="milliseconds")

    def new(self, rows: list[tuple[str, str, str]]) -> set[str]:
        """The customers among `rows` (customer, message id, arrival) who wrote something new."""
        customers = set()
        for customer, message_id, received in rows:
            arrived = ledger_time(received) or self._cursor
            if message_id not in self._seen:
                self._seen[message_id] = arrived
                customers.add(customer)
            self._cursor = max(self._cursor, arrived - LOOK_BACK)
        self._seen = {m: at for m, at in self._seen.items() if at >= self._cursor}
        return customers


def _parsed(stamp: str | None) -> datetime:
    """A ledger time; an unreadable one counts as long ago (the wait is over)."""
    try:
        return datetime.fromisoformat(stamp or "")
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _template_of(message: Message) -> tuple[str, str, str]:
    """What a template refusal is about: the step's template in this message's language (a
    template may exist in one language and not in another)."""
    content = message.content
    language = content.get("language")
    code = language.get("code", "") if isinstance(language, dict) else ""
    return message.step.key, str(content.get("name", "")), str(code)


def _skipped(step: str, recipient: str, title: str, why: str) -> Outcome:
    """Not sent, and why (`when`, `blocked`, `interrupted`): looked at again next run
    (`expired` aside: final)."""
    return Outcome(step, recipient, "skipped", error_title=title, error_details=why, attempts=0)


def _waiting(step: str, recipient: str, title: str, why: str, code: int | None = None) -> Outcome:
    """Not sent yet, and what it waits for (WINDOW_WAIT, ANSWER): looked at again next run."""
    return Outcome(
        step,
        recipient,
        "waiting",
        error_code=code,
        error_title=title,
        error_details=why,
        attempts=0,
    )


def _awaited(item: Waiting) -> str:
    if item.reason == WAITS_WINDOW:
        return "the customer to write (a message other than a template needs their 24-hour window)"
    if item.reason == WAITS_QUIET:
        return "the recipient's morning (settings.send_between, in their time zone)"
    if item.reason == WAITS_TIME:
        return "its time (after:)"
    if item.reason == WAITS_EVENT:
        after = item.step.after
        event = after.event if after is not None else "sent"
        return f"step {item.on} to be {event}" if event != "replied" else f"a reply to {item.on}"
    return f"the answer to step {item.on}"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _rendered(items: Iterator[Item]) -> Iterator[Item]:
    """A recipient's items; a render failure (validated before the run, so a bug or a file
    changed under it) stops the run with its located line."""
    try:
        yield from items
    except RenderFailure as failure:
        raise StopRun(failure.problem.format()) from None


def _failure_outcome(message: Message, failure: ApiFailure, attempts: int) -> Outcome:
    return _outcome(
        message,
        "failed",
        http_status=failure.http_status or None,
        error_code=failure.code,
        error_title=failure.title,
        error_details=failure.details,
        attempts=attempts,
    )


def _spam_message(failure: ApiFailure, refusals: int) -> str:
    return (
        f"the API's spam rate limit refused {refusals} messages ({failure}); the run stops:"
        " sending more now would lower the number's quality further. Check its quality rating"
        " in WhatsApp Manager, then run again later with --retry-failed"
    )


def _auth_message(failure: ApiFailure, dialect: Dialect) -> str:
    return (
        f"the API refused the credentials ({failure}); check what the flow's"
        f" {dialect.credentials_from} reads (the messages it refused for them are not failed:"
        " the next run sends them)"
    )
