"""`python -m tests.scaled_backoff SCALE ARGS...`: flowrun ARGS with its retry back-off times
SCALE (BACKOFF_BASE, BACKOFF_MAX and PAIR_BACKOFF of runner/executor.py; doubling, jitter and
Retry-After untouched), for end-to-end tests whose point is what is retried, not how long.

Why: a run against a sandbox that refuses 40 requests in a row waited ~25 s of real back-off,
proving nothing more than the same run with waits 20 times shorter. Tests keep real back-off
where the wait is what they check (the slow-marked variants in test_hardening.py and
test_dialects.py, and every in-process run of flowrun that does not scale it).
"""

from __future__ import annotations

import sys

from runner import executor

SCALED = ("BACKOFF_BASE", "BACKOFF_MAX", "PAIR_BACKOFF")


def scale_backoff(factor: float) -> None:
    """Multiply the executor's back-off constants by `factor`; a renamed constant fails here,
    loudly, rather than leaving a test slow or unscaled."""
    for name in SCALED:
        setattr(executor, name, float(getattr(executor, name)) * factor)


if __name__ == "__main__":
    scale_backoff(float(sys.argv.pop(1)))
    from runner.cli import main

    main()
