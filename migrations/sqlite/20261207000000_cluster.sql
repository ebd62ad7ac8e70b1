-- Cluster mode: one row per partition of the JetStream span stream. `epoch` moves on at every
-- claim, so a commit by a node that lost the partition fails; `checkpoint` is the highest
-- stream sequence number of the partition whose spans are in a committed segment.
CREATE TABLE IF NOT EXISTS cluster_partitions (
    partition_id BIGINT PRIMARY KEY,
    epoch        BIGINT NOT NULL,
    checkpoint   BIGINT NOT NULL,
    owner        TEXT   NOT NULL
);
