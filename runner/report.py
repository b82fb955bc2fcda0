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

from . import statuses
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
        known = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'statuses'").fetchone()
        if known is None:  # a ledger no run or listener has opened since statuses came
            db.executescript(statuses.SCHEMA.replace("CREATE TABLE", "CREATE TEMP TABLE"))
    except sqlite3.DatabaseError as exc:
        raise FlowrunError(f"{path}: not a flowrun ledger ({exc})") from None
    return db


# From the status webhooks (flowrun listen), joined by the API's message id.
DELIVERY = {
    "delivery": "s.status",
    "delivered_at": "s.delivered_at",
    "read_at": "s.read_at",
    "delivery_error_code": "s.error_code",
    "delivery_error": "coalesce(s.error_title, '') || coalesce(': ' || s.error_details, '')",
}
_JOIN = "FROM messages m LEFT JOIN statuses s ON s.message_id = m.message_id"


def write_rows(path: Path, flow: str | None, fmt: str, out: TextIO) -> None:
    """Every message row, one per line, as CSV (with a header) or JSON lines; the delivery
    columns are empty until a status webhook says more."""
    db = _open(path)
    columns = (*COLUMNS, *DELIVERY)
    selected = [f"m.{name}" for name in COLUMNS] + list(DELIVERY.values())
    query = f"SELECT {', '.join(selected)} {_JOIN}"
    args: tuple[str, ...] = ()
    if flow is not None:
        query += " WHERE m.flow = ?"
        args = (flow,)
    rows = db.execute(query + " ORDER BY m.flow, m.recipient, m.step", args)
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        for row in rows:
            out.write(json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False) + "\n")
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
    lines += _funnel(db, where.replace("flow", "m.flow"), args)
    db.close()
    return lines


def _funnel(db: sqlite3.Connection, where: str, args: tuple[str, ...]) -> list[str]:
    """What the status webhooks said of the sent messages, per step: delivered, read,
    failed (by reason), and still waiting to hear."""
    clause = f"{where} AND" if where else "WHERE"
    rows = db.execute(
        f"SELECT m.flow, m.step, coalesce(s.status, 'waiting'), count(*) {_JOIN}"
        f" {clause} m.state = 'sent' GROUP BY 1, 2, 3",
        args,
    ).fetchall()
    if not any(status != "waiting" for _, _, status, _ in rows):
        return []  # no webhooks heard: nothing to say beyond "sent"
    funnel: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for name, step, status, count in rows:
        funnel[(name, step)][status] = count
    kinds = ("sent", "delivered", "read", "failed", "waiting")
    width = max(len(f"{name}/{step}") for name, step in funnel) + 2
    lines = ["delivery (from status webhooks; 'sent' = accepted, nothing more heard):"]
    lines.append(f"  {'flow/step':<{width}}" + "".join(f"{k:>11}" for k in kinds))
    for (name, step), by_status in sorted(funnel.items()):
        label = f"{name}/{step}"
        lines.append(f"  {label:<{width}}" + "".join(f"{by_status.get(k, 0):>11,}" for k in kinds))
    failed = db.execute(
        f"SELECT s.error_code, s.error_title, count(*) {_JOIN}"
        f" {clause} m.state = 'sent' AND s.status = 'failed' GROUP BY 1, 2 ORDER BY 3 DESC",
        args,
    ).fetchall()
    for code, title, count in failed:
        lines.append(f"  failed {count:,}x: error {code}, {title}")
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
