"""The PostgreSQL ledger's schema, and the migrations that bring an older one up to it.

The same tables and columns as the SQLite ledger's (schema.py: its docstring says what each
holds), so that a query, a report or `ledger copy` reads both alike; times stay ISO 8601 text
in UTC, which sorts as time (records.now). The version lives in a table of its own,
`flowrun_schema` (one row); PG_MIGRATIONS[n] brings a ledger from version n to n + 1, each in
the transaction that bumps the version, under an advisory lock so that two
runners starting at once migrate once.

The tables are created in the connection's current schema (`public` unless the URL says
`?options=-csearch_path%3DNAME`), so one database may hold several ledgers, and a database
holding a `messages` table that is not flowrun's is refused rather than written into.
"""

from __future__ import annotations

INITIAL = """
CREATE TABLE flowrun_schema (version integer NOT NULL);
INSERT INTO flowrun_schema VALUES (0);
CREATE TABLE messages (
    flow text NOT NULL,
    step text NOT NULL,
    recipient text NOT NULL,
    state text NOT NULL
        CHECK (state IN ('sending', 'sent', 'failed', 'skipped', 'uncertain', 'waiting')),
    message_id text,
    http_status integer,
    error_code integer,
    error_title text,
    error_details text,
    attempts integer NOT NULL DEFAULT 0,
    first_attempt text,
    last_attempt text,
    body_hash text,
    -- recipient before step: each recipient's rows are one index range
    PRIMARY KEY (flow, recipient, step)
);
CREATE TABLE uploads (
    api text NOT NULL,
    sha256 text NOT NULL,
    media_id text NOT NULL,
    uploaded_at text NOT NULL,
    PRIMARY KEY (api, sha256)
);
-- keyed by the API's message id: a status may arrive before the message's outcome is committed
CREATE TABLE statuses (
    message_id text PRIMARY KEY,
    status text NOT NULL,
    rank integer NOT NULL,
    recipient text,
    error_code integer,
    error_title text,
    error_details text,
    sent_at text,
    delivered_at text,
    read_at text,
    failed_at text,
    received_at text NOT NULL,
    pricing_category text,
    billable boolean
);
CREATE INDEX statuses_by_arrival ON statuses (received_at);
CREATE TABLE inbound (
    message_id text PRIMARY KEY,
    business text NOT NULL,
    customer text NOT NULL,
    at text NOT NULL,
    kind text NOT NULL,
    text text,
    payload text,
    context text,
    received_at text NOT NULL
);
CREATE INDEX inbound_by_customer ON inbound (business, customer, at);
CREATE INDEX inbound_by_arrival ON inbound (received_at);
CREATE TABLE preferences (
    business text NOT NULL,
    customer text NOT NULL,
    category text NOT NULL,
    at text NOT NULL,
    value text NOT NULL CHECK (value IN ('stop', 'resume')),
    received_at text NOT NULL,
    PRIMARY KEY (business, customer, category, at, value)
);
"""

PG_MIGRATIONS: tuple[str, ...] = (INITIAL,)
PG_VERSION = len(PG_MIGRATIONS)

# the advisory lock's key while migrating (any constant of flowrun's own)
MIGRATION_LOCK = 0x666C6F7772756E  # "flowrun"
