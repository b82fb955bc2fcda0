"""How long `flowrun report` takes on a large ledger: what customers did after each step is
read set-based (one pass over `inbound`), never a query per recipient.

Run: python bench/report_bench.py [RECIPIENTS] [INBOUND]   (default: 100000 30000)

The ledger is written through the store's own API (runner/ledger): a `welcome` step sent to
every recipient, a `brochure` step sent to a third of them and waiting (window) for another
third; customers' messages (half quick-reply taps on welcome, stop words, texts, images) and
marketing stops go to random recipients. Each figure is a whole `flowrun report` process.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runner.ledger import Batch, Inbound, Outcome, Preference, SqliteLedger

BUSINESS = "106540352242922"


def build(path: Path, recipients: int, inbound: int) -> None:
    people = [f"1555{i:07d}" for i in range(recipients)]
    with SqliteLedger.for_run(path, "bench") as run:
        run.commit(Batch(outcomes=[_sent("welcome", who) for who in people]))
        third = recipients // 3
        brochure = [_sent("brochure", who) for who in people[:third]]
        why = "waits for the customer to write"
        brochure += [
            Outcome("brochure", who, "waiting", error_title="window", error_details=why, attempts=0)
            for who in people[third : 2 * third]
        ]
        run.commit(Batch(outcomes=brochure))
    rng = random.Random(13)
    start = datetime.now(UTC)
    heard: list[Inbound | Preference] = []
    for n in range(inbound):
        who = rng.choice(people)
        at = (start + timedelta(seconds=rng.randrange(-600, 7200))).isoformat(timespec="seconds")
        if n % 2 == 0:
            payload = rng.choice(("brochure", "later"))
            context = f"wamid.welcome.{who}"
            heard.append(Inbound(f"in.{n}", BUSINESS, who, at, "button", payload, payload, context))
        elif n % 15 == 1:
            heard.append(Inbound(f"in.{n}", BUSINESS, who, at, "text", "STOP"))
        elif n % 15 == 3:
            heard.append(Inbound(f"in.{n}", BUSINESS, who, at, "image"))
        else:
            heard.append(Inbound(f"in.{n}", BUSINESS, who, at, "text", f"question {n}"))
        if n % 30 == 5:
            heard.append(Preference(BUSINESS, who, at, "stop"))
    with SqliteLedger.for_writer(path) as receiver:
        receiver.record_webhooks(heard)


def _sent(step: str, who: str) -> Outcome:
    return Outcome(step, who, "sent", message_id=f"wamid.{step}.{who}")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    recipients, inbound = (int(arg) for arg in (sys.argv[1:] or ["100000", "30000"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.ledger.sqlite"
        started = time.perf_counter()
        build(path, recipients, inbound)
        print(
            f"ledger: {recipients:,} recipients, {inbound:,} inbound, built in"
            f" {time.perf_counter() - started:.1f} s"
        )
        report = [sys.executable, "-m", "runner", "report", "--ledger", str(path)]
        print(f"flowrun --help: {timed([sys.executable, '-m', 'runner', '--help']):.2f} s")
        print(f"flowrun report: {min(timed(report) for _ in range(3)):.2f} s (best of 3)")
        csv = min(timed([*report, "--csv"]) for _ in range(3))
        print(f"flowrun report --csv: {csv:.2f} s (best of 3)")
        subprocess.run(report, check=True)


if __name__ == "__main__":
    main()
