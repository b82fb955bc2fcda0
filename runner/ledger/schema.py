"""The SQLite ledger's schema, and the migrations that bring an older ledger up to it.

The version lives in `PRAGMA user_version` (SQLite's own slot for it, readable by any tool).
Ledgers written before it existed have `user_version` 0 and a `meta` row `schema = 1`; they are
version 1, or version 2 if a flowrun that knew statuses opened them (the statuses table is
created idempotently). Each migration runs once, in the same transaction as the version bump,
so a crash or a second process opening the file at the same moment leaves either the old
version or the new one; the first two are idempotent, since a ledger from before versions may
hold their tables already.

The `meta` row stays `1`: flowrun releases before `user_version` check it, and every migration
so far only adds tables, which they ignore.

Tables, for people who query them (README.md, "The ledger"):
- messages: one row per (flow, step, recipient): its state (sent, failed, skipped, uncertain,
  waiting, or sending while its request is out) and the API's answer
- uploads: a local file's media id per API (and phone number, on Cloud)
- statuses: what the delivery webhooks said of each message id
- inbound: what customers sent (replies, button taps, stop words)
- preferences: customers' marketing stops and resumes
"""

from __future__ import annotations

MESSAGES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema', '1');
CREATE TABLE IF NOT EXISTS messages (
    flow TEXT NOT NULL,
    step TEXT NOT NULL,
    recipient TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'failed', 'skipped', 'uncertain')),
    message_id TEXT,
    http_status INTEGER,
    error_code INTEGER,
    error_title TEXT,
    error_details TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt TEXT,
    last_attempt TEXT,
    body_hash TEXT,
    -- recipient before step: each recipient's rows are read with one index lookup
    PRIMARY KEY (flow, recipient, step)
) WITHOUT ROWID;
-- No secondary indexes: each would be updated twice per message (mark, outcome), a measured
-- 3% of a run's time; recovery and counts scan one flow's rows, once per run.
DROP INDEX IF EXISTS messages_state;
DROP INDEX IF EXISTS messages_message_id;
CREATE TABLE IF NOT EXISTS uploads (
    api TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    media_id TEXT NOT NULL,
    uploaded_at TEXT NOT NULL,
    PRIMARY KEY (api, sha256)
);
"""

# Keyed by the API's message id, not joined into `messages`: a status may arrive before the
# message's outcome is committed (the webhook beat the group commit) and is matched later.
STATUSES = """
CREATE TABLE IF NOT EXISTS statuses (
    message_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    rank INTEGER NOT NULL,
    recipient TEXT,
    error_code INTEGER,
    error_title TEXT,
    error_details TEXT,
    sent_at TEXT,
    delivered_at TEXT,
    read_at TEXT,
    failed_at TEXT,
    received_at TEXT NOT NULL
) WITHOUT ROWID;
"""

# What customers said: their messages (each once, by its id) and their marketing preferences.
# The window, opt-outs and replies are read from these at run time, so a change of the flow's
# stop keywords applies to what was said before it too.
CUSTOMERS = """
ALTER TABLE statuses ADD COLUMN pricing_category TEXT;
ALTER TABLE statuses ADD COLUMN billable INTEGER;
CREATE TABLE IF NOT EXISTS inbound (
    message_id TEXT PRIMARY KEY,
    business TEXT NOT NULL,
    customer TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT,
    payload TEXT,
    context TEXT,
    received_at TEXT NOT NULL
) WITHOUT ROWID;
-- a customer's messages, newest last: the window and replies are one index range
CREATE INDEX IF NOT EXISTS inbound_by_customer ON inbound (business, customer, at);
CREATE TABLE IF NOT EXISTS preferences (
    business TEXT NOT NULL,
    customer TEXT NOT NULL,
    category TEXT NOT NULL,
    at TEXT NOT NULL,
    value TEXT NOT NULL CHECK (value IN ('stop', 'resume')),
    received_at TEXT NOT NULL,
    PRIMARY KEY (business, customer, category, at, value)
) WITHOUT ROWID;
"""

# A step may wait (for the customer to write, or to answer): a state of its own, with its reason
# in error_title/error_details. SQLite cannot change a CHECK constraint in place, so the table
# is rebuilt (https://sqlite.org/lang_altertable.html#otheralter: create, copy, drop, rename),
# inside the migration's transaction. `--follow` finds new customer messages by arrival.
WAITING = """
CREATE TABLE messages_v4 (
    flow TEXT NOT NULL,
    step TEXT NOT NULL,
    recipient TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('sending', 'sent', 'failed', 'skipped', 'uncertain', 'waiting')),
    message_id TEXT,
    http_status INTEGER,
    error_code INTEGER,
    error_title TEXT,
    error_details TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt TEXT,
    last_attempt TEXT,
    body_hash TEXT,
    PRIMARY KEY (flow, recipient, step)
) WITHOUT ROWID;
INSERT INTO messages_v4 SELECT flow, step, recipient, state, message_id, http_status,
    error_code, error_title, error_details, attempts, first_attempt, last_attempt, body_hash
    FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v4 RENAME TO messages;
CREATE INDEX IF NOT EXISTS inbound_by_arrival ON inbound (received_at);
"""

# `--follow` wakes a step that waits for a message to be read when its status arrives.
STATUS_ARRIVALS = """
CREATE INDEX IF NOT EXISTS statuses_by_arrival ON statuses (received_at);
"""

# MIGRATIONS[n] brings a ledger from version n to n + 1.
MIGRATIONS: tuple[str, ...] = (MESSAGES, STATUSES, CUSTOMERS, WAITING, STATUS_ARRIVALS)
VERSION = len(MIGRATIONS)

# The columns of `messages`, in table order (report --csv writes them in this order).
MESSAGE_COLUMNS = (
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
# Every table's columns, in the order `flowrun ledger copy` reads and writes them (copy.py).
# The PostgreSQL tables have the same columns (pg_schema.py); statuses.billable is an INTEGER
# 0/1 here and a boolean there, which each driver converts (Python's bool is an int).
TABLES: dict[str, tuple[str, ...]] = {
    "messages": MESSAGE_COLUMNS,
    "uploads": ("api", "sha256", "media_id", "uploaded_at"),
    "statuses": (
        "message_id",
        "status",
        "rank",
        "recipient",
        "error_code",
        "error_title",
        "error_details",
        "sent_at",
        "delivered_at",
        "read_at",
        "failed_at",
        "received_at",
        "pricing_category",
        "billable",
    ),
    "inbound": (
        "message_id",
        "business",
        "customer",
        "at",
        "kind",
        "text",
        "payload",
        "context",
        "received_at",
    ),
    "preferences": ("business", "customer", "category", "at", "value", "received_at"),
}
# What the status webhooks added, per message (report --csv's last columns).
DELIVERY_COLUMNS = (
    "delivery",
    "delivered_at",
    "read_at",
    "delivery_error_code",
    "delivery_error",
    "pricing_category",
)
