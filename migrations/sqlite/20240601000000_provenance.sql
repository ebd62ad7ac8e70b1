-- Provenance: Parquet segments of the derived tables (traces, edges, critical_path), one row
-- per committed file with the table it belongs to, and the trace-class rules set through
-- PUT /api/v1/classes (one JSON rule per row, in order).
CREATE TABLE IF NOT EXISTS derived_segments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name    TEXT    NOT NULL,
    path          TEXT    NOT NULL UNIQUE,
    min_start_ns  INTEGER NOT NULL,
    max_start_ns  INTEGER NOT NULL,
    row_count     INTEGER NOT NULL,
    byte_size     INTEGER NOT NULL,
    created_at_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS derived_segments_by_table ON derived_segments (table_name, max_start_ns);

CREATE TABLE IF NOT EXISTS class_rules (
    position INTEGER PRIMARY KEY NOT NULL,
    rule     TEXT    NOT NULL
);
