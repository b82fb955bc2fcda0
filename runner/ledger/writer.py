"""The ledger's writer process: commits what the run sends it, and says when each is durable.

Why a process of its own: a writer *thread* shares the GIL with the event loop, which is busy
sending; every time SQLite hands the GIL back, the thread waits for the loop to let go, and a
15-row commit took 1.8 ms instead of 0.3 (measured in a real run). The mark of a message must be
durable before its request leaves, so that wait kept request slots idle. Here the commit runs on
its own interpreter; the run and this process talk over a pipe.

It reads batches from stdin and answers each on stdout (the protocol: wire.py); at the end of
input the last batch is finished, then the process exits. Run as `python -m
runner.ledger.writer LOCATION FLOW [RUNNER]` (RUNNER: the run's id among the runners of a
PostgreSQL ledger); nothing imports this module.
"""

from __future__ import annotations

import signal
import sys
from typing import BinaryIO

from runner.ledger import LedgerWrites, open_for_writing

from .wire import batch_from_wire, frame, read_frame


def serve(ledger: LedgerWrites, source: BinaryIO, sink: BinaryIO) -> None:
    while (data := read_frame(source)) is not None:
        try:
            ledger.commit(batch_from_wire(data))
        except Exception as exc:  # the run reports it; this process goes on reading
            sink.write(frame({"error": str(exc)}))
        else:
            sink.write(frame({"error": None}))
        sink.flush()


def main() -> None:
    # Ctrl-C reaches the whole process group; the run decides when to stop, and closing the
    # pipe is how it tells this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    location, flow = sys.argv[1], sys.argv[2]  # a URL's password comes as PGPASSWORD
    runner = int(sys.argv[3]) if len(sys.argv) > 3 else None
    ledger = open_for_writing(location, flow, runner)
    try:
        serve(ledger, sys.stdin.buffer, sys.stdout.buffer)
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
