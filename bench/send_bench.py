"""flowrun's sending speed against a bare aiohttp loop, whole process against whole process.

Run: python bench/send_bench.py [N] [ROUNDS]   (default: 20000 messages, 3 rounds)

Starts bench/stub_server.py on loopback, then alternates (a) `flowrun FLOW` sending N image
messages (templated link and caption, CSV recipients, ledger on, concurrency 32) and (b) a bare
aiohttp loop sending the same bodies with 32 workers. Prints messages/s of each round, the
medians and the ratio flowrun/aiohttp. flowrun's figure is whole-process (start-up, validation
of every recipient, ledger) divided into N.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLOW = """\
version: 1
name: bench
api: {{kind: onprem, base_url: "{base}", token: "{{{{ env.WA_TOKEN }}}}"}}
settings: {{concurrency: 32, rate: 1000000/s}}  # no pacing: this measures flowrun itself
recipients: {{csv: people.csv}}
messages:
  - image:
      link: "https://cdn.example.com/{{{{ recipient.name }}}}.jpg"
      caption: "Hi {{{{ recipient.name }}}}"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("the stub server did not start")


def flowrun_rate(folder: Path, total: int) -> float:
    for old in folder.glob("flow.ledger.sqlite*"):
        old.unlink()
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "runner", "flow.yaml"],
        cwd=folder,
        check=True,
        env={**os.environ, "WA_TOKEN": "bench"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return total / (time.perf_counter() - started)


def bare_rate(base: str, total: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, str(HERE / "bare_aiohttp.py"), base, str(total), "32"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return total / (time.perf_counter() - started)


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stub = subprocess.Popen([sys.executable, str(HERE / "stub_server.py"), str(port)])
    try:
        wait_for(port)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "flow.yaml").write_text(FLOW.format(base=base), "utf-8")
            rows = (f"+1 555 {i // 10000:03d} {i % 10000:04d},P{i}" for i in range(total))
            (folder / "people.csv").write_text("phone,name\n" + "\n".join(rows) + "\n", "utf-8")
            ours, theirs = [], []
            for round_ in range(1, rounds + 1):
                ours.append(flowrun_rate(folder, total))
                theirs.append(bare_rate(base, total))
                mine, bare = ours[-1], theirs[-1]
                print(f"round {round_}: flowrun {mine:,.0f} msg/s, aiohttp {bare:,.0f} msg/s")
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"median: flowrun {a:,.0f} msg/s, bare aiohttp {b:,.0f} msg/s, ratio {a / b:.2f}")
    finally:
        stub.terminate()
        stub.wait(10)


if __name__ == "__main__":
    main()
