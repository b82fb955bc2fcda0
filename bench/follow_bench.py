"""How soon `flowrun FLOW --follow` answers a customer: from their reply to the step that waited
for it, end to end over loopback.

Run: python bench/follow_bench.py [--people 200] [--replies 50]

Starts the sandbox in this process (the 24-hour window enforced, as WhatsApp does), runs
`flowrun flow.yaml --follow --listen PORT` as a process of its own (template, then a text that
waits for the customer's window), waits for every template, then has `--replies` customers
write one at a time, each as a signed webhook from the sandbox to the run's receiver, and times
until the text reaches the sandbox. Prints the median, p90 and the worst.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.sandbox import PHONE_NUMBER_ID, TOKEN, running  # noqa: E402

SECRET = "bench-secret"
FLOW = """\
version: 1
name: follow
api:
  base_url: "{base}"
  phone_number_id: "{number}"
  token: "{{{{ env.WA_TOKEN }}}}"
settings: {{concurrency: 16, rate: 1000/s, per_recipient_interval: 0}}
recipients: {{csv: people.csv}}
messages:
  - name: welcome
    template: {{name: hello_world, language: en_US}}
  - name: note
    text: {{body: "Thanks for writing back"}}
"""


def post(url: str, body: object) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--replies", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, running() as (base, state):
        rows = "".join(f"+1 555 010 {i:04d}\n" for i in range(args.people))
        Path(folder, "people.csv").write_text("phone\n" + rows, "utf-8")
        Path(folder, "flow.yaml").write_text(FLOW.format(base=base, number=PHONE_NUMBER_ID))
        port = free_port()
        post(f"{base}/sandbox/webhook", {"url": f"http://127.0.0.1:{port}/", "secret": SECRET})
        env = {**os.environ, "WA_TOKEN": TOKEN, "WA_APP_SECRET": SECRET}
        command = [sys.executable, "-m", "runner", "flow.yaml", "--follow", "--listen", str(port)]
        run = subprocess.Popen(
            command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while len(state.inbox) < args.people:
                time.sleep(0.05)
            latencies = []
            for i in range(args.replies):
                customer = f"1555010{i:04d}"
                written = time.monotonic()
                post(f"{base}/sandbox/inbound", {"from": customer, "text": "yes"})
                while not any(m["to"] == customer and m["type"] == "text" for m in state.inbox):
                    time.sleep(0.005)
                latencies.append(time.monotonic() - written)
        finally:
            run.terminate()
            run.wait(30)
    latencies.sort()
    p90 = latencies[int(len(latencies) * 0.9) - 1]
    print(
        f"reply → the step that waited for it, {len(latencies)} customers:"
        f" median {statistics.median(latencies) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms,"
        f" worst {latencies[-1] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
