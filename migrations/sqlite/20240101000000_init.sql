-- The segment catalog: one row per committed Parquet segment, plus the names seen in spans
-- and a key-value table (the WAL checkpoint lives there under key 'checkpoint').
CREATE TABLE IF NOT EXISTS segments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    path          TEXT    NOT NULL UNIQUE,
    min_start_ns  INTEGER NOT NULL,
    max_start_ns  INTEGER NOT NULL,
    row_count     INTEGER NOT NULL,
    byte_size     INTEGER NOT NULL,
    wal_seq_min   INTEGER NOT NULL,
    wal_seq_max   INTEGER NOT NULL,
    services      TEXT    NOT NULL,
    created_at_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_by_time ON segments (min_start_ns, max_start_ns);

CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY NOT NULL
);

CREATE TABLE IF NOT EXISTS operations (
    service TEXT NOT NULL,
    name    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    PRIMARY KEY (service, name, kind)
);

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
