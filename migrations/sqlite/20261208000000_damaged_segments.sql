-- A segment whose file was found missing or unreadable at start-up keeps its row, marked
-- `damaged` with the reason, so queries over its time range can say they skipped it. The row
-- goes when its spans are stored again from the write-ahead log (in the same transaction as
-- the segment that holds them) or when retention deletes it.
ALTER TABLE segments ADD COLUMN damaged TEXT;
