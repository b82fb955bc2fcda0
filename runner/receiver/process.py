"""The receiver in a process of its own beside a run (`flowrun FLOW --listen PORT`): receiving
must not slow sending, so it shares no GIL with the run.

Two pipes tie it to the run:
- **ready**: it writes `ready` once the port is its own, or the one line saying why it could
  not take it; the run starts sending only after `ready`. (Connecting to the port proves
  nothing: it succeeds when another process listens there, and the statuses would go to that
  one's ledger.)
- **lifeline** (its stdin): nothing is written to it; the receiver stops when it closes, which
  happens however the run ends (its end of the pipe closes with it, even on kill -9), so no
  receiver is left behind holding the port. Ctrl-C reaches the whole process group: the
  receiver ignores it and stays for the statuses of the messages the run still finishes.

Run as `python -m runner.receiver.process LEDGER PORT READY_FD`; only `listening` starts it.
LEDGER is a file, or a postgresql:// URL without its password: a command line is readable by
everyone (`ps`), so the password goes in the child's environment as PGPASSWORD
(runner/ledger/locations.py), as for the run's ledger writer.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from runner.errors import EXIT_INVALID, FlowrunError
from runner.ledger import is_postgres
from runner.ledger.locations import child_environment, remember

START_WITHIN = 10.0  # seconds for the receiver to take its port
GRACE = 10.0  # seconds a run with --listen waits for the last messages' statuses
STOP_WITHIN = 30.0  # seconds for it to finish what it holds once the run is over
_STOPPING = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def listening(location: str | Path, port: int, secret: str | None = None) -> Iterator[None]:
    """A receiver for the ledger at `location` (a file, or a postgresql:// URL: the run's
    `ledger.location`) on 127.0.0.1:`port`, from before the first message to after the run; a
    port it cannot take is a FlowrunError before anything is sent. `secret`: the app secret to
    check signatures with, instead of WA_APP_SECRET (the sandbox's own)."""
    ready, ready_for_child = os.pipe()
    ledger, env = _child_ledger(location)
    command = [sys.executable, "-m", "runner.receiver.process", ledger, str(port)]
    if secret is not None:
        env = {**(env or os.environ), "WA_APP_SECRET": secret}
    try:
        listener = subprocess.Popen(
            [*command, str(ready_for_child)],
            stdin=subprocess.PIPE,
            pass_fds=[ready_for_child],
            env=env,
        )
    except BaseException:
        os.close(ready)
        raise
    finally:
        os.close(ready_for_child)
    try:
        _wait_until_ready(listener, ready, port)
        yield
    finally:
        os.close(ready)
        assert listener.stdin is not None
        listener.stdin.close()  # the lifeline: it finishes what it holds, then says so
        try:
            listener.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            listener.kill()
            listener.wait()


def _child_ledger(location: str | Path) -> tuple[str, dict[str, str] | None]:
    """The ledger as the child's command line names it, and the child's environment (None:
    this one's): a URL loses its password, which goes in PGPASSWORD (module docstring). A
    URL given with its password is taken too: it is remembered, never passed on."""
    if not is_postgres(location):
        return str(location), None
    shown = remember(str(location))
    return shown, child_environment(shown)


def _wait_until_ready(listener: subprocess.Popen[bytes], ready: int, port: int) -> None:
    said = b""
    deadline = time.monotonic() + START_WITHIN
    while b"\n" not in said:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([ready], [], [], left)[0]:
            raise FlowrunError(f"--listen {port}: the receiver did not start within 10 s")
        chunk = os.read(ready, 4096)
        if not chunk:
            break
        said += chunk
    line = said.decode("utf-8", "replace").strip()
    if line != "ready":
        listener.wait(STOP_WITHIN)
        reason = line or f"the receiver stopped (exit {listener.returncode})"
        raise FlowrunError(f"--listen {port}: {reason}; nothing was sent")


class Settling(Protocol):
    """What `await_statuses` reads: the run's own store, SQLite or PostgreSQL
    (runner/ledger/reads.py, `Reads.unsettled`)."""

    def unsettled(self, since: str) -> int: ...


def await_statuses(ledger: Settling, since: str) -> None:
    """Until every message of the run's flow sent since `since` has its final status (read,
    failed, deleted) or GRACE seconds pass; later ones need a `flowrun listen` left running.
    Read on the run's own ledger connection, which sees what the receiver commits (as
    --follow does). Ctrl-C or SIGTERM ends the wait (the run then says what it sent, and its
    receiver stops with it)."""
    deadline = time.monotonic() + GRACE
    with _interruptible() as interrupted:
        while time.monotonic() < deadline:
            if interrupted():
                print("flowrun: stopped waiting for statuses", file=sys.stderr)
                return
            if ledger.unsettled(since) == 0:
                return
            time.sleep(0.1)


@contextlib.contextmanager
def _interruptible() -> Iterator[Callable[[], bool]]:
    """SIGINT and SIGTERM, while in it, only set a flag (only the main thread has signals)."""
    signals: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = {sig: signal.signal(sig, lambda s, _: signals.append(s)) for sig in _STOPPING}
    try:
        yield lambda: bool(signals)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    """The receiver process: serve until the lifeline closes; say on READY_FD whether the
    port is ours (and nothing on the terminal if it is not: the run says it, once)."""
    from runner.receiver.server import Receiver, serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a file, or a URL without its password (PGPASSWORD brings it: `listening`)
    ledger, port, ready_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    secret = os.environ.get("WA_APP_SECRET") or None
    with os.fdopen(ready_fd, "wb", buffering=0) as answer:

        def say(line: str) -> None:
            with contextlib.suppress(OSError):  # the run is gone already: the lifeline says so
                answer.write(f"{line}\n".encode())

        def ready() -> None:
            print(receiver.banner("127.0.0.1", port), flush=True)
            say("ready")

        try:
            receiver = Receiver(ledger, secret, os.environ.get("WA_VERIFY_TOKEN") or None)
        except FlowrunError as exc:  # a ledger it cannot open
            say(str(exc))
            sys.exit(EXIT_INVALID)
        try:
            serve(receiver, "127.0.0.1", port, ready, sys.stdin.buffer)
        except FlowrunError as exc:
            say(str(exc))
            sys.exit(EXIT_INVALID)
        finally:
            receiver.close()
    print(receiver.counts.summary(), flush=True)


if __name__ == "__main__":
    main()
