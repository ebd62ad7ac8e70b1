-- Cluster mode: files in the shared object store that are to be deleted once
-- `delete_after_ns` has passed, by whichever node sweeps first. A compaction marks its output
-- here before writing it, and its commit swaps that mark for marks on the merged inputs
-- (with their span segment ids, whose rollup rows go with them), so a node that dies at any
-- point leaves no file that nobody deletes.
CREATE TABLE IF NOT EXISTS doomed_files (
    path            TEXT   PRIMARY KEY,
    segment_id      BIGINT,
    delete_after_ns BIGINT NOT NULL
);
