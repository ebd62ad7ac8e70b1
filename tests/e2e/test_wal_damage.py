"""A damaged record in the middle of a write-ahead log segment, as a bad disk or a stray write
leaves it, is not a torn tail: after a restart every acknowledged span in the records around
it is back, the one damaged record is reported (an ERROR naming the file, offset and sequence
number, `meshtrace_wal_records_lost_total`), the segment is kept aside as evidence, and a
damaged record whose spans are already in Parquet costs nothing."""

from __future__ import annotations

import struct

from mtlib import eventually, new_trace_id, now_ns, post_otlp_json, request_json, span_json

SERVICE = "wal-damage-svc"
REQUESTS = 10
HEADER = 16  # u32 length and kind, u32 crc32, u64 sequence number


def send_requests(server, first: int, count: int) -> None:
    """One request, one span named req-<i>, each acknowledged before the next is sent."""
    for i in range(first, first + count):
        t = now_ns()
        spans = [span_json(new_trace_id().hex(), f"req-{i}", t, t + 1_000_000)]
        r = post_otlp_json(server, request_json(SERVICE, spans))
        assert r.status_code == 200, r.text


def records(segment) -> list[tuple[int, int]]:
    """(offset, sequence number) of each record of a log segment, read by its framing."""
    data = segment.read_bytes()
    out, offset = [], 0
    while offset + HEADER <= len(data):
        word, _crc, seq = struct.unpack_from("<IIQ", data, offset)
        out.append((offset, seq))
        offset += HEADER + (word & 0x7FFFFFFF)
    assert offset == len(data), "the segment ends with a whole record"
    return out


def damage_record(server, index: int) -> int:
    """Flips a payload byte of the index-th record of the only log segment; returns its seq."""
    segments = sorted((server.data_dir / "wal").glob("wal-*.log"))
    assert len(segments) == 1, segments
    offset, seq = records(segments[0])[index]
    data = bytearray(segments[0].read_bytes())
    data[offset + HEADER + 5] ^= 0x5A
    segments[0].write_bytes(bytes(data))
    return seq


def stored_names(server) -> set[str]:
    rows = server.api.sql_rows(f"SELECT name FROM spans WHERE service_name = '{SERVICE}'")
    return {r[0] for r in rows}


def test_damaged_record_in_the_middle_loses_only_itself(server_factory):
    # Nothing is flushed to Parquet: the log is the only copy of every acknowledged span.
    server = server_factory(flush_age="1h")
    send_requests(server, 0, REQUESTS)
    server.kill9()
    lost_seq = damage_record(server, 4)
    server.start()

    want = {f"req-{i}" for i in range(REQUESTS)} - {"req-4"}
    assert eventually(lambda: stored_names(server) == want, what="the records around the damage")
    log = server.log_text()
    error = next(line for line in log.splitlines() if "damaged wal records lost" in line)
    assert "ERROR" in error and f"first_seq={lost_seq}" in error and "wal-" in error, error
    assert "truncating torn wal tail" not in log
    assert server.api.metric("meshtrace_wal_records_lost_total") == 1
    assert len(list((server.data_dir / "wal" / "damaged").iterdir())) == 1

    # The segment was rewritten: the next start meets no damage and loses nothing more.
    send_requests(server, REQUESTS, 1)
    server.restart()
    assert eventually(lambda: stored_names(server) == want | {f"req-{REQUESTS}"}, what="after restart")
    assert server.api.metric("meshtrace_wal_records_lost_total") == 0


def test_damaged_record_already_in_parquet_costs_nothing(server_factory):
    server = server_factory()  # flushes after 1 s
    send_requests(server, 0, REQUESTS)
    eventually(lambda: server.api.metric("meshtrace_flushes_total") >= 1, what="a flush")
    eventually(lambda: len(stored_names(server)) == REQUESTS, what="stored")
    server.kill9()
    damage_record(server, 2)  # the active segment still holds flushed records
    server.start()

    assert eventually(lambda: len(stored_names(server)) == REQUESTS, what="every span")
    assert server.api.metric("meshtrace_wal_records_lost_total") == 0
    assert server.api.metric("meshtrace_wal_records_skipped_total") == 1
    assert "damaged wal records skipped: already stored in Parquet" in server.log_text()
