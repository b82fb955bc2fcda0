"""Pacing: keep the whole run under the API's message rate, and slow down when it says so.

The rate starts at the flow's `settings.rate` (or the dialect's documented limit). When the API
answers "too fast" (Cloud 130429, HTTP 429, ...) everyone pauses for the back-off and the rate is
halved; after a quiet spell it climbs back by a quarter at a time, never above where it started.
Multiplicative decrease, gradual increase: the usual way to find a limit nobody tells you.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dialect import Dialect
    from .models import Settings

RECOVER_AFTER = 5.0  # seconds without a throttle before the rate climbs again
RECOVER_FACTOR = 1.25
MIN_RATE = 1.0  # messages/s: never slower than this


class Pacer:
    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = rate  # None: no limit unless the API asks for one
        self.rate = rate
        self._full = rate  # the flow's rate, for all the runs that share its campaign
        self._runs = 1
        self.throttles = 0
        self._clock = clock
        self._next = 0.0
        self._pause_until = 0.0
        self._changed = clock()
        self._sent = 0  # requests since `_counting_since`: the rate the API refused
        self._counting_since = clock()

    def share(self, runs: int) -> None:
        """`runs` runs of the flow share its campaign (a PostgreSQL ledger): the API's rate is
        the phone number's, so each keeps its part of the flow's rate (a rate lowered by the
        API's "too fast" keeps its proportion)."""
        runs = max(runs, 1)
        if self._full is None or runs == self._runs:
            return
        factor = self._runs / runs
        self._runs = runs
        self.ceiling = self._full / runs
        if self.rate is not None:
            self.rate = min(self.rate * factor, self.ceiling)

    def delay(self) -> float:
        """Take the next slot: how long to wait before sending (0 to go now)."""
        now = self._clock()
        return self._take(now) - now

    def take(self) -> float:
        """Take the next slot: when to send, on this pacer's clock (now or later)."""
        return self._take(self._clock())

    def _take(self, now: float) -> float:
        self._recover(now)
        self._sent += 1
        slot = max(now, self._pause_until)
        if self.rate is not None:
            slot = max(slot, self._next)
            self._next = slot + 1.0 / self.rate
        return slot

    def throttled(self, pause: float) -> None:
        """The API said "too fast": everyone waits `pause`, and the rate is halved (once for
        a burst of such answers: they are for requests that were in flight together)."""
        now = self._clock()
        self.throttles += 1
        paused = now < self._pause_until
        self._pause_until = max(self._pause_until, now + pause)
        if paused:
            return  # the answers of requests already in flight: one slow-down per pause
        current = self.rate
        if current is None:  # no limit set: start from the rate the API just refused
            elapsed = max(now - self._counting_since, 1e-3)
            current = self._sent / elapsed
        self.rate = max(MIN_RATE, current / 2)
        self._changed = now

    def _recover(self, now: float) -> None:
        if self.rate is None or now - self._changed < RECOVER_AFTER:
            return
        self._changed = now
        self._sent, self._counting_since = 0, now
        raised = self.rate * RECOVER_FACTOR
        if self.ceiling is not None:
            self.rate = min(raised, self.ceiling)
        elif self.throttles and raised > 10_000:
            self.rate = None  # far above anything refused: back to no limit
        else:
            self.rate = raised


TICK = 0.020  # seconds: waits end on a multiple of this, everyone due in one tick together


class Ticker:
    """Waits that end in ticks: one timer and one future per tick, for every waiter due in it.

    Why: held to the API's rate, a run waits for a pacing slot per message, and a timer (and a
    `wait_for` task) per message woke the event loop once per message, each message marked
    alone (a commit each): most of what a paced run cost. Here a wait ends on the first tick
    at or after its time, together with every other wait due in that tick: the messages of a
    tick mark together (one commit) and leave together, and their answers come back together,
    so every wake-up, in this process, its ledger writer and the API's, serves a tick's worth.
    A wait ends within TICK after its time (or up to 2 ms before: libuv's timers count whole
    ms), so the rate holds, in bursts of rate × TICK (20 at 1,000/s). Why 20 ms, measured with
    bench/paced_bench.py at 1,000/s (2026-12-01): CPU per message 0.61 of the bare paced
    loop's; with 10 ms ticks 0.75, with 5 ms 0.93.
    `stop()` ends every wait at once (Ctrl-C does not wait out a pause or a pacing slot).
    """

    def __init__(self, tick: float = TICK, clock: Callable[[], float] = time.monotonic) -> None:
        self.tick = tick
        self.stopped = False
        self._clock = clock
        self._early = min(tick / 2, 0.002)  # a timer may fire this early (libuv counts in ms)
        self._waiting: dict[int, asyncio.Future[None]] = {}  # tick number → its waiters
        self._ticks: list[int] = []  # heap of the tick numbers waited for
        self._timer: asyncio.TimerHandle | None = None
        self._armed: int | None = None  # the tick the timer is set for

    def number(self, when: float) -> int:
        """The tick a wait until `when` (this ticker's clock) ends on."""
        return math.ceil(when / self.tick)

    def at(self, when: float) -> asyncio.Future[None]:
        """A future done on the first tick at or after `when`, or when `stop()` is called (at
        once if it was). One future for all the waits of a tick: never cancel it."""
        loop = asyncio.get_running_loop()
        if self.stopped:
            done = loop.create_future()
            done.set_result(None)
            return done
        number = self.number(when)
        future = self._waiting.get(number)
        if future is None:
            future = self._waiting[number] = loop.create_future()
            heapq.heappush(self._ticks, number)
            if self._armed is None or number < self._armed:
                self._arm(number)
        return future

    def release(self) -> None:
        """End the waits whose tick has come (the timer calls this)."""
        self._timer = self._armed = None
        due = math.floor((self._clock() + self._early) / self.tick)
        while self._ticks and self._ticks[0] <= due:
            future = self._waiting.pop(heapq.heappop(self._ticks), None)
            if future is not None and not future.done():
                future.set_result(None)
        if self._ticks:
            self._arm(self._ticks[0])

    def stop(self) -> None:
        """End every wait now, and every later one at once."""
        self.stopped = True
        self.close()
        waiting, self._waiting, self._ticks = self._waiting, {}, []
        for future in waiting.values():
            if not future.done():
                future.set_result(None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._armed = None

    def _arm(self, number: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, number * self.tick - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self.release)
        self._armed = number


def run_pace(settings: Settings, dialect: Dialect, *, sandbox: bool) -> tuple[float | None, float]:
    """A run's rate (messages/s, None: none) and per-recipient interval (s): the flow's, else
    the dialect's documented limits. The sandbox has no limits, so trying a flow there is
    quick."""
    rate = settings.rate_per_second
    if rate is None and not sandbox:
        rate = dialect.default_rate
    interval = settings.per_recipient_interval
    if interval is None:
        interval = 0.0 if sandbox else dialect.default_interval
    return rate or None, interval
