"""Run a command as a child of this small process; print its exit code and its own peak RSS.

Why a process in between: Linux counts the memory a child had before exec in its `ru_maxrss`
(the kernel keeps the old image's high-water mark at exec), so a child forked straight from a
pytest process that has grown to 300 MB reports 300 MB whatever it did. Forked from this small
interpreter instead, the figure is the command's own.

Usage: python tests/peak.py SECONDS COMMAND...  →  prints `CODE PEAK_KB` (code -9: killed after
SECONDS).
"""

from __future__ import annotations

import resource
import subprocess
import sys


def main() -> None:
    seconds, command = float(sys.argv[1]), sys.argv[2:]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        code = child.wait(seconds)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        code = -9
    # the only child, reaped: its peak is the children's peak
    print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


if __name__ == "__main__":
    main()
