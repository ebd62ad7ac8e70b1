-- The segment catalog: one row per committed Parquet segment, plus the names seen in spans
-- and a key-value table (the WAL checkpoint lives there under key 'checkpoint').
CREATE TABLE IF NOT EXISTS segments (
    id            BIGSERIAL PRIMARY KEY,
    path          TEXT   NOT NULL UNIQUE,
    min_start_ns  BIGINT NOT NULL,
    max_start_ns  BIGINT NOT NULL,
    row_count     BIGINT NOT NULL,
    byte_size     BIGINT NOT NULL,
    wal_seq_min   BIGINT NOT NULL,
    wal_seq_max   BIGINT NOT NULL,
    services      TEXT   NOT NULL,
    created_at_ns BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_by_time ON segments (min_start_ns, max_start_ns);

CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY
);

CREATE TABLE IF NOT EXISTS operations (
    service TEXT NOT NULL,
    name    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    PRIMARY KEY (service, name, kind)
);

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
