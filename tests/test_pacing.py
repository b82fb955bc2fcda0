"""Pacing: the rate's slots, and waits that end in ticks (with an injected clock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from runner.pacing import Pacer, Ticker


def test_slots_are_spaced_by_the_rate() -> None:
    now = [10.0]
    pacer = Pacer(100.0, clock=lambda: now[0])
    assert [pacer.take() for _ in range(3)] == pytest.approx([10.0, 10.01, 10.02])
    now[0] = 11.0  # idle a while: the next slot is now, not a burst to catch up
    assert pacer.take() == 11.0
    assert pacer.delay() == pytest.approx(0.01)


def test_waits_due_in_one_tick_end_together_never_before_it() -> None:
    async def scenario() -> None:
        now = [10.0]
        ticker = Ticker(0.01, clock=lambda: now[0])
        first, second, later = ticker.at(10.001), ticker.at(10.009), ticker.at(10.011)
        assert first is second  # one future for everyone due in the tick at 10.01
        assert later is not first
        now[0] = 10.005
        ticker.release()
        assert not first.done()
        now[0] = 10.0085  # a timer may fire a little early (libuv counts whole ms)
        ticker.release()
        assert first.done()
        assert not later.done()
        now[0] = 10.02
        ticker.release()
        assert later.done()
        ticker.close()

    asyncio.run(scenario())


def test_stop_ends_every_wait_at_once() -> None:
    async def scenario() -> None:
        now = [10.0]
        ticker = Ticker(0.01, clock=lambda: now[0])
        soon, much_later = ticker.at(10.5), ticker.at(310.0)  # a pace, a long Retry-After
        ticker.stop()
        assert soon.done()
        assert much_later.done()
        assert ticker.at(20.0).done()  # and any wait after the stop

    asyncio.run(scenario())


class CountingTicker(Ticker):
    releases = 0

    def release(self) -> None:
        self.releases += 1
        super().release()


def test_one_timer_wakes_everyone_due_in_a_tick() -> None:
    """On the real clock and loop: 25 waits over 50 ms end in about 6 wake-ups, each wait
    at or after its time."""

    async def scenario() -> None:
        ticker = CountingTicker(0.01)
        begin = time.monotonic()
        wanted = [begin + 0.002 * i for i in range(1, 26)]
        late: list[float] = []

        def ended(when: float) -> Callable[[object], None]:
            return lambda _: late.append(time.monotonic() - when)

        for when in wanted:
            ticker.at(when).add_done_callback(ended(when))
        await asyncio.wait_for(asyncio.gather(*(ticker.at(w) for w in wanted)), 10)
        await asyncio.sleep(0)  # the done callbacks
        assert len(late) == 25
        assert min(late) >= -0.0025  # never before its time (a timer may fire 2 ms early)
        assert ticker.releases <= 12  # one wake-up a tick, not one a wait (25)

    asyncio.run(scenario())
