-- Per-minute RED rollups of spans (calls, errors, a duration sketch per service, operation
-- and span kind), written in the transaction that commits their span segment and deleted
-- with it. The Jaeger SPM endpoints (/api/metrics/*) and the dashboard's service view read
-- them, so their cost grows with the time range, not the span count.
CREATE TABLE IF NOT EXISTS span_rollups (
    segment_id BIGINT  NOT NULL,
    minute_ns  BIGINT  NOT NULL,
    service    TEXT    NOT NULL,
    operation  TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    calls      BIGINT  NOT NULL,
    errors     BIGINT  NOT NULL,
    durations  BYTEA   NOT NULL
);
CREATE INDEX IF NOT EXISTS span_rollups_by_service ON span_rollups (service, minute_ns);
CREATE INDEX IF NOT EXISTS span_rollups_by_segment ON span_rollups (segment_id);
