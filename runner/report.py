"""`flowrun report`: what the ledger knows, for people (a summary) and for tools (CSV, JSONL).

Reads the SQLite file read-only, so a report can run while a campaign is sending.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import TextIO

from .errors import FlowrunError

COLUMNS = (
    "flow",
    "step",
    "recipient",
    "state",
    "message_id",
    "http_status",
    "error_code",
    "error_title",
    "error_details",
    "attempts",
    "first_attempt",
    "last_attempt",
    "body_hash",
)
STATES = ("sent", "failed", "skipped", "uncertain", "sending")


def _open(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FlowrunError(f"{path}: no ledger here; run the flow first, or name one with --ledger")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.execute("SELECT 1 FROM messages LIMIT 1")
    except sqlite3.DatabaseError as exc:
        raise FlowrunError(f"{path}: not a flowrun ledger ({exc})") from None
    return db


def write_rows(path: Path, flow: str | None, fmt: str, out: TextIO) -> None:
    """Every message row, one per line, as CSV (with a header) or JSON lines."""
    db = _open(path)
    query = f"SELECT {', '.join(COLUMNS)} FROM messages"
    args: tuple[str, ...] = ()
    if flow is not None:
        query += " WHERE flow = ?"
        args = (flow,)
    rows = db.execute(query + " ORDER BY flow, recipient, step", args)
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    else:
        for row in rows:
            out.write(json.dumps(dict(zip(COLUMNS, row, strict=True)), ensure_ascii=False) + "\n")
    db.close()


def summary_lines(path: Path, flow: str | None) -> list[str]:
    """Counts per step and state, failures grouped by the API's error, uncertain recipients."""
    db = _open(path)
    where, args = ("WHERE flow = ?", (flow,)) if flow is not None else ("", ())
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for name, step, state, count in db.execute(
        f"SELECT flow, step, state, count(*) FROM messages {where} GROUP BY flow, step, state",
        args,
    ):
        counts[(name, step)][state] = count
    lines = [f"ledger: {path}"]
    if not counts:
        lines.append("no messages recorded yet")
        return lines
    width = max(len(step) for _, step in counts) + 2
    lines.append(f"  {'flow/step':<{width + 12}}" + "".join(f"{s:>10}" for s in STATES))
    for (name, step), by_state in sorted(counts.items()):
        label = f"{name}/{step}"
        lines.append(
            f"  {label:<{width + 12}}" + "".join(f"{by_state.get(s, 0):>10,}" for s in STATES)
        )
    lines += _failures(db, where, args)
    lines += _uncertain(db, where, args)
    db.close()
    return lines


def _failures(db: sqlite3.Connection, where: str, args: tuple[str, ...]) -> list[str]:
    clause = f"{where} AND" if where else "WHERE"
    groups = db.execute(
        "SELECT http_status, error_code, error_title, count(*), group_concat(recipient, ', ')"
        f" FROM messages {clause} state = 'failed'"
        " GROUP BY http_status, error_code, error_title ORDER BY count(*) DESC",
        args,
    ).fetchall()
    lines = ["failures:"] if groups else []
    for status, code, title, count, who in groups:
        sample = ", ".join(who.split(", ")[:5]) + (", ..." if count > 5 else "")
        reason = f"HTTP {status}, error {code}, {title}" if status else f"{title}"
        lines.append(f"  {count:,}x {reason}: {sample}")
    return lines


def _uncertain(db: sqlite3.Connection, where: str, args: tuple[str, ...]) -> list[str]:
    clause = f"{where} AND" if where else "WHERE"
    rows = db.execute(
        f"SELECT step, recipient FROM messages {clause} state IN ('uncertain', 'sending')"
        " ORDER BY recipient LIMIT 20",
        args,
    ).fetchall()
    if not rows:
        return []
    listed = ", ".join(f"{recipient} ({step})" for step, recipient in rows)
    return [
        "uncertain (the API may or may not have them; --retry-uncertain sends them again):",
        f"  {listed}",
    ]
