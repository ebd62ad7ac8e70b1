-- Latency budgets and priorities: class objectives set through
-- PUT /api/v1/classes/{class}/objective (JSON), operator priority overrides, the current
-- assignment set of every service with its history (JSON bodies), and the proxies that polled
-- or watched them.
CREATE TABLE IF NOT EXISTS budget_objectives (
    class         TEXT    PRIMARY KEY NOT NULL,
    objective     TEXT    NOT NULL,
    updated_at_ns INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS priority_overrides (
    class    TEXT    PRIMARY KEY NOT NULL,
    priority INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS priority_sets (
    service         TEXT    PRIMARY KEY NOT NULL,
    version         INTEGER NOT NULL,
    generated_at_ns INTEGER NOT NULL,
    body            TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS priority_history (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    service         TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    generated_at_ns INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    body            TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS priority_history_by_service ON priority_history (service, version);

CREATE TABLE IF NOT EXISTS proxies (
    service      TEXT    NOT NULL,
    node         TEXT    NOT NULL,
    via          TEXT    NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    PRIMARY KEY (service, node)
);
