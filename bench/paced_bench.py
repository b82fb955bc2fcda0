"""The CPU a paced campaign costs: flowrun (SQLite and PostgreSQL ledgers) against a bare paced
aiohttp loop, at the API's rate.

Run: python bench/paced_bench.py [--n 20000] [--rounds 3] [--rate 1000] [--latency 0.25]
                                 [--jitter 0] [--fsync-off] [--only NAME ...]
     (Linux: it reads /proc; 20,000 messages at 1,000/s is about 20 s a run. The PostgreSQL
     contender needs Debian's postgresql package: initdb and pg_ctl, as tests/pg.py uses them)

A real campaign is held to the API's rate, and most of the time flowrun waits: what it costs
then is CPU, not speed. Starts bench/stub_server.py in its own process, answering every message
--latency seconds after it arrived (without blocking its loop: 1,000/s × 0.25 s is 250 waiting
at once), then alternates whole processes, round after round:
  (a) flowrun-sqlite: `flowrun FLOW`, On-Premises dialect like bench/send_bench.py: N image
      messages (templated link and caption, CSV recipients, the ledger on and durable: a new
      SQLite file, WAL and synchronous=FULL), settings {rate: 1000/s, concurrency: 400};
  (b) flowrun-pg: the same run with the ledger in PostgreSQL (FLOWRUN_LEDGER=postgresql://...,
      the same as --ledger but with the password out of the process list), a fresh schema each
      run (Postgres.fresh), since the runners/claims tables of runs sharing a flow would
      otherwise find the previous run's recipients served;
  (c) bare: bench/bare_paced.py, a bare aiohttp loop on uvloop, 400 workers sharing one slot
      counter, each sleeping until its slot, sending the same bodies;
  (d) with --fsync-off only: flowrun-pg-fsync-off, (b) with the server's fsync turned off for
      that run (ALTER SYSTEM, reloaded; turned on again after it).
The PostgreSQL server (tests/pg.py, one for the whole bench, on loopback) runs with fsync and
full_page_writes on, the server's defaults: flowrun commits with synchronous_commit = on
(runner/ledger/postgres.py), and the SQLite ledger fsyncs its WAL on every commit
(synchronous=FULL, runner/ledger/sqlite.py), so only a durable server is a fair comparison.
For each run:
  - messages/s held, measured where the rate matters, at the stub: from the arrival times of
    the requests it received, the first and last 10% left out (start-up, and the tail where
    fewer than `concurrency` messages are left, are not the steady state);
  - CPU per message: user + sys of the whole process tree / N, from os.wait4 of the child
    (a child's figure includes every descendant it reaped: flowrun's ledger writer). This
    process is a child subreaper, so a descendant orphaned before being reaped would come to
    it and be counted too (and shown); for flowrun, the writer's CPU is also sampled from /proc
    while it runs, and the bench checks that the tree's figure holds it;
  - for every run, the PostgreSQL server's CPU per message, which no process tree of flowrun
    holds: user + sys of the postmaster, its reaped children (the backends of connections that
    closed) and its live children (the backends still open, the checkpointer, WAL writer, ...),
    from /proc before and after the run. During a run that does not use it, it is the idle
    server's cost (the noise floor of that figure).
Then the medians, each flowrun's CPU per message over bare's (and flowrun-pg's with the
server's CPU added), and the share of the target rate held.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import psycopg
from send_bench import free_port, wait_for, write_flow

if TYPE_CHECKING:
    from tests.pg import Postgres

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
    db_cpu: float | None  # the PostgreSQL server's CPU over the run, seconds (None: no server)
    notes: list[str] = field(default_factory=list)

    @property
    def us_per_message(self) -> float:
        return self.cpu / self.total * 1e6

    @property
    def db_us_per_message(self) -> float:
        return (self.db_cpu or 0.0) / self.total * 1e6


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
class Contender:
    """One whole process to measure: its command, its environment, and what to do before and
    after each of its runs (a fresh ledger; the server's fsync)."""

    name: str
    command: list[str]
    before: Callable[[], dict[str, str]] = dict  # → variables for the run's environment
    after: Callable[[], list[str]] = list  # → notes on the run (what its ledger holds)


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


def run_child(
    name: str, command: list[str], cwd: Path, keep: set[int], extra: dict[str, str]
) -> Tree:
    """Run one contender to its end, watching its descendants; fail loudly if it failed.
    `keep`: this process's children that are not the contender's (the stub)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "WA_TOKEN": "bench", **extra}
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
        orphans = reap_orphans(keep)
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


def measure(contender: Contender, cwd: Path, stub: Stub, postmaster: int | None, total: int) -> Run:
    """One contender's run: its tree's CPU, the rate the stub saw, the database server's CPU."""
    name = contender.name
    extra = contender.before()  # (its sessions are over before the server's CPU is read)
    get(stub.base, "/times")  # forget what came before
    stub_before = stat(stub.pid)
    db_before = server_ticks(postmaster)
    tree = run_child(name, contender.command, cwd, {stub.pid}, extra)
    db_after = server_ticks(postmaster)
    stub_after = stat(stub.pid)
    after = contender.after()
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
        None if db_after is None or db_before is None else (db_after - db_before) / CLOCK_TICKS,
    )
    if len(times["arrivals"]) != total:
        run.notes.append(f"the stub received {len(times['arrivals']):,} messages, not {total:,}")
    run.notes += after
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


def server_ticks(postmaster: int | None) -> int | None:
    """The PostgreSQL server's CPU so far, in ticks: the postmaster's own and its reaped
    children's (the backends of closed connections), and its live children's, own and reaped.
    A backend ending between two reads could be missed or counted twice: the bench reads
    before a run starts and after its connections closed, when none is ending."""
    if postmaster is None:
        return None
    main = stat(postmaster)
    if main is None:
        raise SystemExit(f"the PostgreSQL server (pid {postmaster}) is gone")
    total = main[1] + main[2]
    for child in children_of(postmaster):
        info = stat(child)
        if info is not None:
            total += info[1] + info[2]
    return total


def reap_orphans(keep: set[int]) -> int:
    """Reap descendants orphaned to this subreaper (none expected): how many. `keep`: this
    process's own long-lived children (the stub), never waited for here."""
    count = 0
    for pid in children_of(os.getpid()):
        if pid not in keep:
            os.waitpid(pid, 0)
            count += 1
    return count


WIDTH = len("flowrun-pg-fsync-off")


def show(run: Run, rate: float) -> None:
    db = "" if run.db_cpu is None else f"; postgres: {run.db_us_per_message:4.0f} us/message"
    print(
        f"  {run.name:{WIDTH}} {run.held:7,.0f} msg/s held ({run.held / rate:6.1%}),"
        f" {run.us_per_message:5.0f} us CPU/message ({run.cpu:5.2f} s, sys {run.sys:4.2f}),"
        f" {run.seconds:5.1f} s wall; stub: {run.stub_cpu / run.seconds:4.0%} of a core,"
        f" answers late by {run.late_p99 * 1000:.1f} ms at p99{db}",
        flush=True,
    )
    for note in run.notes:
        print(f"  {'':{WIDTH}} {note}", flush=True)


def main() -> None:
    args = arguments()
    wanted = set(args.only or CONTENDERS)
    if not args.fsync_off and not args.only:
        wanted.discard("flowrun-pg-fsync-off")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    print(
        f"{args.n:,} messages a run at {args.rate:,}/s, concurrency {args.concurrency},"
        f" API latency {args.latency * 1000:.0f} ms (± {args.jitter * 1000:.0f});"
        " CPU = user + sys of the whole process tree",
        flush=True,
    )
    # The server first: its postmaster, orphaned when pg_ctl exits, must go to init, not to
    # this process once it is a subreaper (reap_orphans would wait for it forever).
    with database(any(name.startswith("flowrun-pg") for name in wanted)) as server:
        become_subreaper()
        stub_command = [sys.executable, str(HERE / "stub_server.py"), str(port)]
        stub_process = subprocess.Popen(
            [*stub_command, "--latency", str(args.latency), "--jitter", str(args.jitter)]
        )
        try:
            wait_for(port)
            stub = Stub(base, stub_process.pid)
            contenders = [c for c in contenders_for(args, base, server) if c.name in wanted]
            runs = run_rounds(args, contenders, stub, server)
        finally:
            stub_process.terminate()
            stub_process.wait(10)
    summarize(runs, args.rate)


CONTENDERS = ("flowrun-sqlite", "flowrun-pg", "flowrun-pg-fsync-off", "bare")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000, help="messages/s, for all")
    parser.add_argument("--concurrency", type=int, default=400, help="for all")
    parser.add_argument("--latency", type=float, default=0.25, help="the stub's, seconds")
    parser.add_argument(
        "--jitter", type=float, default=0.0, help="the stub's latency varies by this much"
    )
    parser.add_argument(
        "--fsync-off",
        action="store_true",
        help="also flowrun-pg with the server's fsync off (a fourth run each round)",
    )
    parser.add_argument(
        "--only", choices=CONTENDERS, action="append", help="run these contenders only"
    )
    return parser.parse_args()


def contenders_for(args: argparse.Namespace, base: str, server: Postgres | None) -> list[Contender]:
    """The contenders in the order each round runs them."""
    flowrun = [sys.executable, "-m", "runner", "flow.yaml"]
    bare = [sys.executable, str(HERE / "bare_paced.py"), base]
    bare += [str(args.n), str(args.concurrency), str(args.rate)]
    contenders = [Contender("flowrun-sqlite", flowrun)]
    if server is not None:
        ledger = PgLedger(server, args.n)
        contenders += [
            Contender("flowrun-pg", flowrun, ledger.fresh, ledger.check),
            Contender("flowrun-pg-fsync-off", flowrun, ledger.unsynced, ledger.synced),
        ]
    return [*contenders, Contender("bare", bare)]


def run_rounds(
    args: argparse.Namespace, contenders: list[Contender], stub: Stub, server: Postgres | None
) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {c.name: [] for c in contenders}
    postmaster = None if server is None else server.postmaster()
    flow = FLOW.replace("CONCURRENCY", str(args.concurrency)).replace("RATE", str(args.rate))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_flow(folder, stub.base, args.n, flow)
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}:", flush=True)
            for contender in contenders:
                for old in folder.glob("flow.ledger.sqlite*"):
                    old.unlink()
                runs[contender.name].append(measure(contender, folder, stub, postmaster, args.n))
                show(runs[contender.name][-1], args.rate)
    return runs


@dataclass
class PgLedger:
    """A fresh schema for each PostgreSQL run, and a look at what the run left in it."""

    server: Postgres
    total: int
    url: str = ""

    def fresh(self) -> dict[str, str]:
        """A new, empty ledger: runs of one flow on one schema would share its recipients
        (runner/ledger/postgres.py), and the second would find them served. The URL (it holds
        the password) goes in the environment, never in an argv."""
        self.url = self.server.fresh()
        return {"FLOWRUN_LEDGER": self.url}

    def check(self) -> list[str]:
        """Notes if the run did not leave every message `sent` in its ledger."""
        with psycopg.connect(self.url) as db:
            rows = db.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall()
        states = {str(state): int(n) for state, n in rows}
        if states == {"sent": self.total}:
            return []
        return [f"the PostgreSQL ledger holds {states}, not {self.total:,} sent"]

    def unsynced(self) -> dict[str, str]:
        set_fsync(self.server, on=False)
        return self.fresh()

    def synced(self) -> list[str]:
        set_fsync(self.server, on=True)
        return self.check()


@contextlib.contextmanager
def database(wanted: bool) -> Iterator[Postgres | None]:
    """A durable PostgreSQL server on loopback for the whole bench (module docstring), or
    None if no contender needs one."""
    if not wanted:
        yield None
        return
    pg = tests_pg()
    bin_dir = pg.binaries()
    if bin_dir is None:
        raise SystemExit(
            "PostgreSQL is not installed (Debian: apt-get install postgresql);"
            " --only flowrun-sqlite --only bare leaves it out"
        )
    with pg.running(bin_dir, durable=True) as server:
        with psycopg.connect(server.url()) as admin:
            row = admin.execute("SELECT version(), current_setting('fsync')").fetchone()
        assert row is not None
        print(f"{str(row[0]).split(' on ')[0]} on loopback, fsync {row[1]}", flush=True)
        yield server


def tests_pg() -> ModuleType:
    """tests/pg.py, the one way this project starts a throwaway server (initdb and pg_ctl, as
    the `postgres` user when root). The bench runs as a script from bench/, so the checkout's
    root goes on the import path first."""
    root = str(HERE.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests import pg

    return pg


def set_fsync(server: Postgres, *, on: bool = True) -> None:
    """Turn the server's fsync on or off (a reload, no restart: fsync is a `sighup` setting,
    https://www.postgresql.org/docs/current/runtime-config-wal.html#GUC-FSYNC), and wait until a
    new session sees it."""
    value = "on" if on else "off"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"ALTER SYSTEM SET fsync = {value}")
        admin.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with psycopg.connect(server.url()) as probe:
            row = probe.execute("SHOW fsync").fetchone()
        if row is not None and row[0] == value:
            return
        time.sleep(0.05)
    raise SystemExit(f"the server's fsync did not turn {value}")


@dataclass
class Medians:
    held: float  # msg/s
    us: float  # CPU of the contender's process tree per message, us
    db: float | None  # the server's per message, us
    with_db: float  # the two together, us (median of the runs' sums)


def summarize(runs: dict[str, list[Run]], rate: float) -> None:
    medians = {
        name: Medians(
            statistics.median(r.held for r in done),
            statistics.median(r.us_per_message for r in done),
            None
            if done[0].db_cpu is None
            else statistics.median(r.db_us_per_message for r in done),
            statistics.median(r.us_per_message + r.db_us_per_message for r in done),
        )
        for name, done in runs.items()
        if done
    }
    print("median:")
    for name, m in medians.items():
        db = "" if m.db is None else f"; postgres {m.db:4.0f} us/message"
        if name.startswith("flowrun-pg") and m.db is not None:
            db += f" (flowrun + postgres: {m.with_db:5.0f} us/message)"
        elif m.db is not None:
            db += " (idle server)"
        print(
            f"  {name:{WIDTH}} {m.held:7,.0f} msg/s held ({m.held / rate:6.1%}),"
            f" {m.us:5.0f} us CPU/message{db}"
        )
    bare = medians.get("bare")
    if bare is None:
        return
    for name, m in medians.items():
        if name == "bare":
            continue
        line = f"{name}/bare CPU per message: {m.us / bare.us:.2f}"
        if name.startswith("flowrun-pg"):
            line += f"; with the server's CPU: {m.with_db / bare.us:.2f}"
        print(line + f"; held {m.held / bare.held:.3f} of bare's rate")


if __name__ == "__main__":
    main()
