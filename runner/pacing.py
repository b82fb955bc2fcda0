"""Pacing: keep the whole run under the API's message rate, and slow down when it says so.

The rate starts at the flow's `settings.rate` (or the dialect's documented limit). When the API
answers "too fast" (Cloud 130429, HTTP 429, ...) everyone pauses for the back-off and the rate is
halved; after a quiet spell it climbs back by a quarter at a time, never above where it started.
Multiplicative decrease, gradual increase: the usual way to find a limit nobody tells you.
"""

from __future__ import annotations

import time
from collections.abc import Callable

RECOVER_AFTER = 5.0  # seconds without a throttle before the rate climbs again
RECOVER_FACTOR = 1.25
MIN_RATE = 1.0  # messages/s: never slower than this


class Pacer:
    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = rate  # None: no limit unless the API asks for one
        self.rate = rate
        self.throttles = 0
        self._clock = clock
        self._next = 0.0
        self._pause_until = 0.0
        self._changed = clock()
        self._sent = 0  # requests since `_counting_since`: the rate the API refused
        self._counting_since = clock()

    def delay(self) -> float:
        """Take the next slot: how long to wait before sending (0 to go now)."""
        now = self._clock()
        self._recover(now)
        self._sent += 1
        slot = max(now, self._pause_until)
        if self.rate is not None:
            slot = max(slot, self._next)
            self._next = slot + 1.0 / self.rate
        return slot - now

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


def run_pace(
    flow_rate: float | None,
    flow_interval: float | None,
    dialect_rate: float | None,
    dialect_interval: float,
    *,
    sandbox: bool,
) -> tuple[float | None, float]:
    """A run's rate (messages/s, None: none) and per-recipient interval (s): the flow's, else
    the dialect's documented limits. The sandbox has no limits, so trying a flow there is
    quick."""
    rate = flow_rate
    if rate is None and not sandbox:
        rate = dialect_rate
    interval = flow_interval
    if interval is None:
        interval = 0.0 if sandbox else dialect_interval
    return rate or None, interval
