"""The receiver in a process of its own beside a run (`flowrun FLOW --listen PORT`): receiving
must not slow sending, so it shares no GIL with the run."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from runner.errors import FlowrunError
from runner.ledger import SETTLED_RANK, LedgerReader

START_WITHIN = 10.0  # seconds for the receiver to take its port
GRACE = 10.0  # seconds a run with --listen waits for the last messages' statuses


@contextlib.contextmanager
def listening(ledger: Path, port: int) -> Iterator[None]:
    """`flowrun listen` for `ledger`, from before the first message to after the run."""
    command = [sys.executable, "-m", "runner", "listen", "--ledger", str(ledger)]
    listener = subprocess.Popen([*command, "--port", str(port)])
    try:
        _wait_for_port(listener, port)
        yield
    finally:
        if listener.poll() is None:
            listener.send_signal(signal.SIGINT)  # it finishes what it holds, then says so
        listener.wait(30)


def _wait_for_port(listener: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_WITHIN
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if listener.poll() is not None or time.monotonic() > deadline:
            raise FlowrunError(f"--listen {port}: the receiver did not start (port in use?)")
        time.sleep(0.05)


def await_statuses(ledger: Path, flow: str, since: str) -> None:
    """Until every message sent since `since` has its final status (read, failed, deleted) or
    GRACE seconds pass; later ones need a `flowrun listen` left running."""
    deadline = time.monotonic() + GRACE
    with LedgerReader(ledger) as reader:
        while time.monotonic() < deadline:
            if reader.unsettled(flow, since, SETTLED_RANK) == 0:
                return
            time.sleep(0.1)
