"""flowrun's sending speed against bare HTTP client loops, whole process against whole process.

Run: python bench/send_bench.py [--n 20000] [--rounds 3] [--scale 10000,100000,1000000]
     (needs the bench extra: pip install -e '.[bench]', for httpx)

Starts bench/stub_server.py (a minimal WhatsApp-shaped server) on loopback in its own process,
then alternates, round after round:
  (a) `flowrun FLOW` sending N image messages (templated link and caption, CSV recipients, the
      ledger on and durable, progress shown, concurrency 32);
  (b) a bare aiohttp loop sending the same N bodies with 32 workers and nothing else;
  (c) the same with a bare httpx.AsyncClient.
Each figure is N divided by the whole process's wall time (start-up, for flowrun validation of
every recipient and the ledger too). Prints each round, the medians, and flowrun/aiohttp and
flowrun/httpx. With --scale: one flowrun run per size, messages/s and peak RSS (the largest of
its processes: the run itself; its ledger writer is a small process beside it).
"""

from __future__ import annotations

import argparse
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
settings: {{concurrency: 32, rate: 1000000/s, window: open}}  # unpaced: flowrun itself
recipients: {{csv: people.csv}}
messages:
  - image:
      link: "https://cdn.example.com/{{{{ recipient.name }}}}.jpg"
      caption: "Hi {{{{ recipient.name }}}}"
"""
WORKERS = "32"


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


def write_flow(folder: Path, base: str, total: int, flow: str = FLOW) -> None:
    """The flow (FLOW, or another template with a {base} field) and N recipients."""
    for old in folder.glob("*"):
        old.unlink()
    (folder / "flow.yaml").write_text(flow.format(base=base), "utf-8")
    with (folder / "people.csv").open("w", encoding="utf-8") as out:
        out.write("phone,name\n")
        for i in range(total):
            out.write(f"+1 555 {i // 10000:03d} {i % 10000:04d},P{i}\n")


def timed(command: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds of a whole process, and the peak RSS (MB) of it or its children."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter();"
        f"subprocess.run({command!r}, check=True, stdout=subprocess.DEVNULL,"
        " stderr=subprocess.DEVNULL);"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    env = {**os.environ, "WA_TOKEN": "bench"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    seconds, peak_kb = out.stdout.split()
    return float(seconds), float(peak_kb) / 1024


def flowrun(folder: Path) -> list[str]:
    for old in folder.glob("flow.ledger.sqlite*"):
        old.unlink()
    return [sys.executable, "-m", "runner", "flow.yaml"]


def compare(base: str, total: int, rounds: int, with_httpx: bool) -> None:
    contenders = {"flowrun": [], "aiohttp": [], "httpx": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_flow(folder, base, total)
        for round_ in range(1, rounds + 1):
            seconds, _ = timed(flowrun(folder), folder)
            contenders["flowrun"].append(total / seconds)
            bare = [str(HERE / "bare_aiohttp.py"), base, str(total), WORKERS]
            contenders["aiohttp"].append(total / timed([sys.executable, *bare])[0])
            if with_httpx:
                bare = [str(HERE / "bare_httpx.py"), base, str(total), WORKERS]
                contenders["httpx"].append(total / timed([sys.executable, *bare])[0])
            shown = ", ".join(
                f"{name} {rates[-1]:,.0f}" for name, rates in contenders.items() if rates
            )
            print(f"round {round_}: {shown} msg/s", flush=True)
    medians = {name: statistics.median(rates) for name, rates in contenders.items() if rates}
    print("median: " + ", ".join(f"{name} {rate:,.0f} msg/s" for name, rate in medians.items()))
    for other in ("aiohttp", "httpx"):
        if other in medians:
            print(f"flowrun/{other}: {medians['flowrun'] / medians[other]:.2f}")


def scale(base: str, sizes: list[int]) -> None:
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_flow(folder, base, size)
            seconds, peak = timed(flowrun(folder), folder)
            print(
                f"scale {size:>9,} recipients: {size / seconds:8,.0f} msg/s,"
                f" {seconds:7.1f} s, peak RSS {peak:.0f} MB",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", default="", help="sizes for the scale run, e.g. 10000,100000")
    parser.add_argument("--no-httpx", action="store_true", help="skip the httpx loop (slow)")
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stub = subprocess.Popen([sys.executable, str(HERE / "stub_server.py"), str(port)])
    try:
        wait_for(port)
        if args.rounds:
            compare(base, args.n, args.rounds, not args.no_httpx)
        if args.scale:
            scale(base, [int(size) for size in args.scale.split(",")])
    finally:
        stub.terminate()
        stub.wait(10)


if __name__ == "__main__":
    main()
