"""Pacing: the rate's slots and waits that end in ticks (with an injected clock); then paced
runs end to end against the sandbox: the rate is held, marks are committed per tick, Ctrl-C
and kill -9 keep their guarantees."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.ledger import GroupCommit, Outcome, SqliteLedger
from runner.ledger.batcher import FLUSH_AFTER
from runner.pacing import Pacer, Ticker
from runner.sandbox import SandboxState
from tests.sandbox_helpers import children, count, post, query, start, wait_until, write_flow
from tests.test_hardening import gone, integrity


def test_slots_are_spaced_by_the_rate() -> None:
    now = [10.0]
    pacer = Pacer(100.0, clock=lambda: now[0])
    assert [pacer.take() for _ in range(3)] == pytest.approx([10.0, 10.01, 10.02])
    now[0] = 11.0  # idle a while: the next slot is now, not a burst to catch up
    assert pacer.take() == 11.0
    assert pacer.delay() == pytest.approx(0.01)


def test_runs_sharing_a_campaign_share_its_rate() -> None:
    """The API's limit is the phone number's: two runs of a flow at 100/s each would be 200."""
    now = [10.0]
    pacer = Pacer(100.0, clock=lambda: now[0])
    pacer.share(2)
    assert [pacer.take() for _ in range(3)] == pytest.approx([10.0, 10.02, 10.04])
    pacer.throttled(0.0)  # the API said "too fast" all the same: 25/s
    pacer.share(1)  # the other run ended: this one's rate doubles, still halved by the API
    assert pacer.rate == pytest.approx(50.0)
    assert pacer.ceiling == pytest.approx(100.0)
    unlimited = Pacer(None, clock=lambda: now[0])
    unlimited.share(4)
    assert unlimited.rate is None


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


def test_answers_between_marks_do_not_each_cost_a_commit(tmp_path: Path) -> None:
    """An answer that comes while a mark is being committed rides with the next mark, or
    leaves after FLUSH_AFTER: answers trickling in (an API whose latency varies) are not a
    commit each."""

    async def scenario() -> None:
        ledger = SqliteLedger.for_run(tmp_path / "flow.ledger.sqlite", "t")
        commits = await GroupCommit.start(ledger.location, ledger.flow)

        def state(recipient: str) -> str | None:
            found = ledger.recipient_states(recipient).get("a")
            return None if found is None else found[0]

        try:
            marking = asyncio.ensure_future(commits.mark("a", "15550100001", "h1"))
            # the mark joins a batch, and its pump hands it to the writer (however many turns
            # of the loop that takes on a busy machine: two sleep(0)s were not always enough)
            batches = commits._batches
            while not marking.done() and (batches._pump is None or batches._pending):
                await asyncio.sleep(0)
            commits.record(Outcome("a", "15550100002", "sent", "wamid.2", 200))
            await marking
            await asyncio.sleep(0.2)
            assert state("15550100002") is None  # no commit of its own
            await commits.mark("a", "15550100003", "h3")
            assert state("15550100002") == "sent"  # with the next mark
            commits.record(Outcome("a", "15550100004", "sent", "wamid.4", 200))
            await asyncio.sleep(FLUSH_AFTER + 1.0)
            assert state("15550100004") == "sent"  # or on its own, in time
        finally:
            await commits.close()
            ledger.close()

    asyncio.run(scenario())


ONE_STEP = "  - text: {body: 'hi {{ recipient.name }}'}\n"


def test_a_paced_run_holds_its_rate_and_commits_marks_per_tick(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """200 messages/s with room to spare (16 slots, 50 ms answers: 10 in flight): the API
    receives them at that rate, never faster; marks are committed a tick at a time. Bounds
    are generous: the machine is shared."""
    base, state = api
    people = 400
    write_flow(folder, base, ONE_STEP, people=people, concurrency=16, rate="200/s")
    post(f"{base}/sandbox/faults", {"latency": 0.05})
    process = start(folder)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert count(folder, "state = 'sent'") == people
    arrivals = sorted(state.received)
    first, last = people // 10, people - 1 - people // 10
    held = (last - first) / (arrivals[last] - arrivals[first])
    assert 0.3 * 200 <= held <= 1.1 * 200, held  # never faster; slower on a busy machine
    # every mark of a tick shares its commit's time stamp: far fewer commits than messages
    commits = query(folder, "SELECT count(DISTINCT first_attempt) FROM messages")[0][0]
    assert commits <= people / 2, commits


def test_ctrl_c_in_a_paced_run_leaves_every_message_sent_or_untouched(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """20 messages/s, 8 slots, 200 ms answers: at any moment some messages are in flight and
    some wait for their slot's tick. Ctrl-C: the marked ones finish `sent`, the waiting ones
    leave no row; the next run sends exactly the rest."""
    base, state = api
    write_flow(folder, base, ONE_STEP, people=100, concurrency=8, rate="20/s")
    post(f"{base}/sandbox/faults", {"latency": 0.2})
    process = start(folder)
    wait_until(lambda: len(state.inbox) >= 10, 30)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted" in out
    assert dict(query(folder, "SELECT state, count(*) FROM messages GROUP BY state")) == {
        "sent": len(state.inbox)
    }
    write_flow(folder, base, ONE_STEP, people=100)  # the rest, unpaced
    post(f"{base}/sandbox/faults", {})
    rest = start(folder)
    rest.communicate(timeout=60)
    assert rest.returncode == 0
    assert Counter(Counter(m["to"] for m in state.inbox).values()) == {1: 100}


@pytest.mark.slow  # an attack of several seconds: CI runs it
def test_kill_9_in_a_paced_run_leaves_at_most_concurrency_in_doubt(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """200 messages/s, 40 slots, 100 ms answers: about 20 in flight and 20 waiting for their
    tick. After kill -9 at most 40 rows are `sending`; the next run sends none twice."""
    base, state = api
    concurrency, people = 40, 600
    write_flow(folder, base, ONE_STEP, people=people, concurrency=concurrency, rate="200/s")
    post(f"{base}/sandbox/faults", {"latency": 0.1})
    process = start(folder)
    wait_until(lambda: len(state.inbox) >= 100, 30)
    writers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    gone(writers)
    assert integrity(folder) == "ok"
    doubt = count(folder, "state = 'sending'")
    assert doubt <= concurrency
    again = start(folder)
    _out, err = again.communicate(timeout=60)
    assert again.returncode in (0, 1), err
    delivered = Counter(m["to"] for m in state.inbox)
    assert max(delivered.values()) == 1  # nothing reached the API twice
    assert count(folder, "state = 'uncertain'") == doubt
    assert count(folder, "state = 'sent'") + doubt == people
