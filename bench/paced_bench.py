"""The CPU a paced campaign costs: flowrun against a bare paced aiohttp loop, at the API's rate.

Run: python bench/paced_bench.py [--n 20000] [--rounds 3] [--rate 1000] [--latency 0.25]
                                 [--jitter 0]
     (Linux: it reads /proc; 20,000 messages at 1,000/s is about 20 s a run)

A real campaign is held to the API's rate, and most of the time flowrun waits: what it costs
then is CPU, not speed. Starts bench/stub_server.py in its own process, answering every message
--latency seconds after it arrived (without blocking its loop: 1,000/s × 0.25 s is 250 waiting
at once), then alternates whole processes, round after round:
  (a) `flowrun FLOW`, On-Premises dialect like bench/send_bench.py: N image messages (templated
      link and caption, CSV recipients, the ledger on and durable), settings
      {rate: 1000/s, concurrency: 400};
  (b) bench/bare_paced.py: a bare aiohttp loop on uvloop, 400 workers sharing one slot counter,
      each sleeping until its slot, sending the same bodies.
For each run:
  - messages/s held, measured where the rate matters, at the stub: from the arrival times of
    the requests it received, the first and last 10% left out (start-up, and the tail where
    fewer than `concurrency` messages are left, are not the steady state);
  - CPU per message: user + sys of the whole process tree / N, from os.wait4 of the child
    (a child's figure includes every descendant it reaped: flowrun's ledger writer). This
    process is a child subreaper, so a descendant orphaned before being reaped would come to
    it and be counted too (and shown); for flowrun, the writer's CPU is also sampled from /proc
    while it runs, and the bench checks that the tree's figure holds it.
Then the medians, flowrun/bare for CPU per message, and the share of the target rate held.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from send_bench import free_port, wait_for, write_flow

HERE = Path(__file__).resolve().parent
FLOW = """\
version: 1
name: paced
api: {{kind: onprem, base_url: "{base}", token: "{{{{ env.WA_TOKEN }}}}"}}
settings: {{concurrency: CONCURRENCY, rate: RATE/s, window: open}}  # the audience wrote
recipients: {{csv: people.csv}}
messages:
  - image:
      link: "https://cdn.example.com/{{{{ recipient.name }}}}.jpg"
      caption: "Hi {{{{ recipient.name }}}}"
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc counts CPU time in these a second
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Run:
    name: str
    total: int
    seconds: float  # wall time of the whole process
    cpu: float  # user + sys of the whole process tree
    sys: float  # of which sys
    held: float  # messages/s at the stub, middle 80% of the run
    late_p99: float  # how late the stub's answers were (its own lag)
    stub_cpu: float  # the stub's CPU over the run, seconds
    notes: list[str] = field(default_factory=list)

    @property
    def us_per_message(self) -> float:
        return self.cpu / self.total * 1e6


def become_subreaper() -> None:
    """Orphaned descendants come to this process (not to init), so their CPU is counted."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("cannot become a child subreaper (Linux only)")


def stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, own user+sys ticks, reaped children's user+sys ticks), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # after the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based
    ppid, utime, stime, cutime, cstime = (int(fields[i]) for i in (1, 11, 12, 13, 14))
    return ppid, utime + stime, cutime + cstime


def children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = stat(int(entry))
            if info is not None and info[0] == parent:
                found.append(int(entry))
    return found


def get(base: str, path: str) -> object:
    with urllib.request.urlopen(base + path, timeout=30) as answer:
        return json.load(answer)


def steady_rate(arrivals: list[float]) -> float:
    """Messages/s over the middle 80% of the arrivals."""
    arrivals = sorted(arrivals)
    first, last = len(arrivals) // 10, len(arrivals) - 1 - len(arrivals) // 10
    if last <= first or arrivals[last] <= arrivals[first]:
        return 0.0
    return (last - first) / (arrivals[last] - arrivals[first])


@dataclass
class Stub:
    base: str
    pid: int


@dataclass
class Tree:
    """What one child process and its descendants used."""

    seconds: float  # wall
    cpu: float  # user + sys: this process's children's total grew by this much
    sys: float  # of which sys
    waited: float  # user + sys as os.wait4 gave it for the child
    orphans: int  # descendants that came to this subreaper
    own: int  # the child's own CPU ticks, last seen while it ran
    seen: dict[int, int]  # descendant pid → the most CPU ticks seen while it ran


def run_child(name: str, command: list[str], cwd: Path, stub: Stub) -> Tree:
    """Run one contender to its end, watching its descendants; fail loudly if it failed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "WA_TOKEN": "bench"}
    seen: dict[int, int] = {}
    own = 0
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        child = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=errors
        )
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            own = sample(child.pid, seen, own)
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        orphans = reap_orphans(stub.pid)
        if child.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode()[-2000:]
            raise SystemExit(f"{name} failed ({child.returncode}): {tail}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Tree(
        seconds,
        cpu,
        after.ru_stime - before.ru_stime,
        usage.ru_utime + usage.ru_stime,
        orphans,
        own,
        seen,
    )


def measure(name: str, command: list[str], cwd: Path, stub: Stub, total: int) -> Run:
    """One contender's run: its tree's CPU, the rate the stub saw."""
    get(stub.base, "/times")  # forget what came before
    stub_before = stat(stub.pid)
    tree = run_child(name, command, cwd, stub)
    stub_after = stat(stub.pid)
    assert stub_before is not None
    assert stub_after is not None
    times = get(stub.base, "/times")
    assert isinstance(times, dict)
    late = sorted(times["late"]) or [0.0]
    run = Run(
        name,
        total,
        tree.seconds,
        tree.cpu,
        tree.sys,
        steady_rate(times["arrivals"]),
        late[int(len(late) * 0.99)],
        (stub_after[1] - stub_before[1]) / CLOCK_TICKS,
    )
    if len(times["arrivals"]) != total:
        run.notes.append(f"the stub received {len(times['arrivals']):,} messages, not {total:,}")
    if tree.orphans:
        run.notes.append(f"{tree.orphans} orphaned descendant(s) reaped here and counted")
    elif abs(tree.cpu - tree.waited) > 0.05:
        run.notes.append(f"wait4 says {tree.waited:.2f} s, the children's total {tree.cpu:.2f} s")
    for pid, ticks in tree.seen.items():
        # The tree's figure must hold at least the child's own CPU and the descendant's, as
        # last seen (a descendant its parent never reaped would be missing from it).
        counted = tree.cpu + 2 / CLOCK_TICKS >= (tree.own + ticks) / CLOCK_TICKS
        seen = ticks / CLOCK_TICKS * 1e6 / total
        run.notes.append(
            f"descendant {pid}: >= {seen:.0f} us/message seen while it ran;"
            f" {'counted in the tree' if counted else 'NOT COUNTED'}"
        )
    return run


def sample(pid: int, seen: dict[int, int], own: int) -> int:
    """Note the CPU of `pid`'s children (the ledger writer); return `pid`'s own."""
    for child in children_of(pid):
        info = stat(child)
        if info is not None:
            seen[child] = max(seen.get(child, 0), info[1])
    info = stat(pid)
    return own if info is None else info[1]


def reap_orphans(stub: int) -> int:
    """Reap descendants orphaned to this subreaper (none expected): how many."""
    count = 0
    for pid in children_of(os.getpid()):
        if pid != stub:
            os.waitpid(pid, 0)
            count += 1
    return count


def show(run: Run, rate: float) -> None:
    print(
        f"  {run.name:8} {run.held:7,.0f} msg/s held ({run.held / rate:6.1%}),"
        f" {run.us_per_message:5.0f} us CPU/message ({run.cpu:5.2f} s, sys {run.sys:4.2f}),"
        f" {run.seconds:5.1f} s wall; stub: {run.stub_cpu / run.seconds:4.0%} of a core,"
        f" answers late by {run.late_p99 * 1000:.1f} ms at p99",
        flush=True,
    )
    for note in run.notes:
        print(f"           {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000, help="messages/s, for both")
    parser.add_argument("--concurrency", type=int, default=400, help="for both")
    parser.add_argument("--latency", type=float, default=0.25, help="the stub's, seconds")
    parser.add_argument(
        "--jitter", type=float, default=0.0, help="the stub's latency varies by this much"
    )
    parser.add_argument("--only", choices=("flowrun", "bare"), help="run one contender only")
    args = parser.parse_args()
    become_subreaper()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stub_command = [sys.executable, str(HERE / "stub_server.py"), str(port)]
    server = subprocess.Popen(
        [*stub_command, "--latency", str(args.latency), "--jitter", str(args.jitter)]
    )
    stub = Stub(base, server.pid)
    flow = FLOW.replace("CONCURRENCY", str(args.concurrency)).replace("RATE", str(args.rate))
    contenders = {
        "flowrun": [sys.executable, "-m", "runner", "flow.yaml"],
        "bare": [
            sys.executable,
            str(HERE / "bare_paced.py"),
            base,
            str(args.n),
            str(args.concurrency),
            str(args.rate),
        ],
    }
    if args.only:
        contenders = {args.only: contenders[args.only]}
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    print(
        f"{args.n:,} messages a run at {args.rate:,}/s, concurrency {args.concurrency},"
        f" API latency {args.latency * 1000:.0f} ms (± {args.jitter * 1000:.0f});"
        " CPU = user + sys of the whole process tree",
        flush=True,
    )
    try:
        wait_for(port)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_flow(folder, base, args.n, flow)
            for round_ in range(1, args.rounds + 1):
                print(f"round {round_}:", flush=True)
                for name, command in contenders.items():
                    for old in folder.glob("flow.ledger.sqlite*"):
                        old.unlink()
                    runs[name].append(measure(name, command, folder, stub, args.n))
                    show(runs[name][-1], args.rate)
    finally:
        server.terminate()
        server.wait(10)
    summarize(runs, args.rate)


def summarize(runs: dict[str, list[Run]], rate: float) -> None:
    medians = {
        name: (
            statistics.median(r.held for r in done),
            statistics.median(r.us_per_message for r in done),
        )
        for name, done in runs.items()
    }
    print("median:")
    for name, (held, us) in medians.items():
        print(f"  {name:8} {held:7,.0f} msg/s held ({held / rate:6.1%}), {us:5.0f} us CPU/message")
    if len(medians) == 2:
        ratio = medians["flowrun"][1] / medians["bare"][1]
        print(f"flowrun/bare CPU per message: {ratio:.2f}")


if __name__ == "__main__":
    main()
