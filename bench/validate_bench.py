"""How long `flowrun validate` takes and how much memory it needs as the CSV grows.

Run: python bench/validate_bench.py [ROWS ...]   (default: 10000 100000)

Each size is a fresh flow in a temporary folder: the example onboarding flow pointed at a
generated CSV. Each figure is a whole `flowrun validate` process; peak RSS is the child's
maximum resident set size. Flat memory means the CSV is streamed, not loaded.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_flow(folder: Path, rows: int) -> Path:
    shutil.copytree(REPO / "flows" / "assets", folder / "assets")
    flow = (REPO / "flows" / "onboarding.yaml").read_text("utf-8")
    (folder / "flow.yaml").write_text(flow, "utf-8")
    langs = ("en", "ru", "de")
    with (folder / "contacts.csv").open("w", encoding="utf-8") as out:
        out.write("phone,name,lang,city\n")
        for i in range(rows):
            phone = f"+1 555 {i // 10000:03d} {i % 10000:04d}"
            out.write(f"{phone},Person {i},{langs[i % 3]},City {i % 97}\n")
    return folder / "flow.yaml"


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS in MB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before) / 1024


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [10_000, 100_000]
    python = sys.executable
    seconds, _ = run([python, "-m", "runner", "--help"])
    print(f"flowrun --help: {seconds:.2f} s")
    for rows in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            flow = make_flow(Path(tmp), rows)
            # a fresh interpreter per size, so ru_maxrss is this run's own peak
            probe = (
                "import resource, subprocess, sys, time; t = time.perf_counter();"
                f"r = subprocess.run([{python!r}, '-m', 'runner', 'validate', {str(flow)!r}],"
                " check=True, capture_output=True, text=True);"
                "print(time.perf_counter() - t,"
                " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024);"
                "print(r.stdout)"
            )
            out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True)
            figures, report = out.stdout.split("\n", 1)
            elapsed, peak = (float(x) for x in figures.split())
            found = re.search(r"([\d,]+) messages", report)
            messages = int(found.group(1).replace(",", "")) if found else 0
            print(
                f"validate {rows:>9,} recipients ({messages:,} messages): {elapsed:6.2f} s,"
                f" {rows / elapsed:,.0f} recipients/s, peak RSS {peak:.0f} MB"
            )


if __name__ == "__main__":
    main()
