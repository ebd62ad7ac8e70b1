-- Provenance: Parquet segments of the derived tables (traces, edges, critical_path), one row
-- per committed file with the table it belongs to, and the trace-class rules set through
-- PUT /api/v1/classes (one JSON rule per row, in order).
CREATE TABLE IF NOT EXISTS derived_segments (
    id            BIGSERIAL PRIMARY KEY,
    table_name    TEXT   NOT NULL,
    path          TEXT   NOT NULL UNIQUE,
    min_start_ns  BIGINT NOT NULL,
    max_start_ns  BIGINT NOT NULL,
    row_count     BIGINT NOT NULL,
    byte_size     BIGINT NOT NULL,
    created_at_ns BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS derived_segments_by_table ON derived_segments (table_name, max_start_ns);

CREATE TABLE IF NOT EXISTS class_rules (
    position BIGINT PRIMARY KEY,
    rule     TEXT   NOT NULL
);
