"""A catalog restored from an older copy (catalog.db saved while the server was stopped, more
spans stored since, the copy put back) leaves Parquet segment files without a catalog row.
At start-up such a file is deleted only when the write-ahead log still holds its sequence
numbers (the log replays them: every span back exactly once); otherwise it is moved to
`quarantine/<same path>` with an ERROR and `meshtrace_segments_quarantined_total`, never
deleted, and the sequence numbers above the restored checkpoint that no log segment holds are
reported lost (an ERROR naming the range, `meshtrace_wal_records_lost_total`, in records)."""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
from pathlib import Path

from faults import (
    assert_metric,
    digest,
    lines_with,
    one_trace_request,
    quarantined,
    send_in_own_segment,
    span_segments,
    start_log,
    wal_firsts,
)
from mtlib import check_stored_once, eventually

SERVICE = "restored-catalog-svc"
WHERE = f"service_name = '{SERVICE}'"
CATALOG_FILES = ("catalog.db", "catalog.db-wal", "catalog.db-shm")

REPLAYED_WARN = "removing segment file without catalog row: the log replays it"
QUARANTINE_ERROR = "segment file without catalog row holds spans the log no longer has"
LOST_ERROR = "damaged wal records lost: these acknowledged spans were not stored elsewhere"
NO_SEGMENT_HOLDS = "no log segment holds these sequences"
QUARANTINED_METRIC = "meshtrace_segments_quarantined_total"
LOST_METRIC = "meshtrace_wal_records_lost_total"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def make_request(i: int, n: int, pad_bytes: int = 0):
    """Request i (see `one_trace_request`): (body, span names)."""
    body, names, _ = one_trace_request(SERVICE, i, n, pad_bytes=pad_bytes)
    return body, names


def stop_ok(server) -> None:
    assert server.stop() == 0, server.log_tail()


def save_catalog(server, to: Path, checkpoint: int) -> None:
    """The operator's copy: catalog.db of the stopped server. Checks that the copy is the
    catalog as it was at the stop (its checkpoint is `checkpoint`), read from a scratch copy
    so that SQLite leaves the saved file alone."""
    to.mkdir()
    shutil.copy2(server.data_dir / "catalog.db", to / "catalog.db")
    scratch = to / "scratch"
    scratch.mkdir()
    shutil.copy2(to / "catalog.db", scratch / "catalog.db")
    db = sqlite3.connect(scratch / "catalog.db")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rows = (
            db.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchall()
            if "meta" in tables
            else []
        )
    finally:
        db.close()
    shutil.rmtree(scratch)
    side = {
        name: (server.data_dir / name).stat().st_size
        for name in CATALOG_FILES[1:]
        if (server.data_dir / name).exists()
    }
    assert rows == [(str(checkpoint),)], (
        f"catalog.db of the gracefully stopped server is not the catalog: checkpoint rows "
        f"{rows}, tables {sorted(tables)}, expected checkpoint {checkpoint}; side files left "
        f"by the stop: {side} (the committed state is still in catalog.db-wal)"
    )


def restore_catalog(server, saved: Path) -> None:
    """Puts the saved catalog.db back and removes its side files."""
    for name in CATALOG_FILES:
        (server.data_dir / name).unlink(missing_ok=True)
    shutil.copy2(saved / "catalog.db", server.data_dir / "catalog.db")


def field(line: str, name: str) -> str:
    """The value of a `name=value` field of a log line."""
    m = re.search(rf"\b{re.escape(name)}=(\S+)", line)
    assert m, f"no {name}= in {line!r}"
    return m[1]


def opened_checkpoint(log: str) -> int:
    """The catalog checkpoint the store reported at open."""
    [line] = lines_with(log, "span store opened")
    return int(field(line, "checkpoint"))


def wait_flushed(server, known: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Waits until the replay is flushed (nothing buffered, a segment beyond `known`); returns
    the span segments that are not in `known` (path -> (first seq, last seq))."""

    def done():
        assert server.api.metric("meshtrace_buffered_spans") == 0, "spans still buffered"
        new = {p: r for p, r in span_segments(server).items() if p not in known}
        assert new, "no segment written since the start"
        return new

    return eventually(done, timeout=20, what="the replayed spans flushed to Parquet")


def covered(ranges) -> list[int]:
    """The sequence numbers a list of (first, last) ranges covers, with repeats."""
    return sorted(seq for first, last in ranges for seq in range(first, last + 1))


# --------------------------------------------------------------------------------------------
# The log still holds everything the restored catalog lacks: completed from it
# --------------------------------------------------------------------------------------------


def test_a_restored_catalog_is_completed_from_the_log(server_factory, tmp_path):
    server = server_factory(flush_age="1s")  # default log segments (64 MiB): nothing truncated
    names: dict[int, list[str]] = {}
    a_segments: list[str] = []
    for i in range(3):
        body, names[i] = make_request(i, 40)
        a_segments.append(send_in_own_segment(server, body))
    a_names = [n for i in range(3) for n in names[i]]
    check_stored_once(server, a_names, WHERE, "after loading A")
    stop_ok(server)
    a_ranges = span_segments(server)
    assert sorted(a_ranges) == sorted(a_segments), a_ranges
    checkpoint_a = max(last for _, last in a_ranges.values())
    saved = tmp_path / "catalog-copy"
    save_catalog(server, saved, checkpoint_a)

    server.start()
    b_segments: list[str] = []
    for i in range(10, 13):
        body, names[i] = make_request(i, 40)
        b_segments.append(send_in_own_segment(server, body))
    everything = [n for i in sorted(names) for n in names[i]]
    check_stored_once(server, everything, WHERE, "after loading B")
    stop_ok(server)
    before = span_segments(server)
    assert set(before) == set(a_segments) | set(b_segments), before
    # The case under test: the log still holds every B record.
    log_first = wal_firsts(server)[0]
    assert all(before[p][0] >= log_first for p in b_segments), (before, wal_firsts(server))

    restore_catalog(server, saved)
    server.start()
    log = start_log(server)
    assert opened_checkpoint(log) == checkpoint_a, "the restored catalog's checkpoint"
    opened = lines_with(log, "span store opened")[0]
    assert int(field(opened, "orphans")) == len(b_segments), opened
    warns = lines_with(log, REPLAYED_WARN)
    assert len(warns) == len(b_segments), "\n".join(warns)
    assert all("WARN" in w for w in warns), warns
    assert {p for p in b_segments if any(p in w for w in warns)} == set(b_segments), warns
    for needle in (QUARANTINE_ERROR, LOST_ERROR):
        assert not lines_with(log, needle), lines_with(log, needle)
    assert not lines_with(log, " ERROR "), lines_with(log, " ERROR ")

    check_stored_once(server, everything, WHERE, "after restoring the old catalog")
    # The replay writes the B records again: new segments holding exactly their sequences.
    a_only = {p: before[p] for p in a_segments}
    rewritten = wait_flushed(server, a_only)
    assert covered(rewritten.values()) == covered(before[p] for p in b_segments), rewritten
    after = span_segments(server)
    assert after == {**a_only, **rewritten}, after
    check_stored_once(server, everything, WHERE, "after the replay was flushed")
    assert quarantined(server) == {}
    assert server.api.metric(QUARANTINED_METRIC) == 0
    assert server.api.metric(LOST_METRIC) == 0

    # Once more: nothing left to settle; still every span once.
    server.restart()
    log = start_log(server)
    for needle in (REPLAYED_WARN, QUARANTINE_ERROR, LOST_ERROR):
        assert not lines_with(log, needle), lines_with(log, needle)
    time.sleep(1.5)  # a flush age: spans a replay brought back would be flushed by now
    check_stored_once(server, everything, WHERE, "after another restart")
    assert span_segments(server) == after
    assert quarantined(server) == {}
    assert server.api.metric(QUARANTINED_METRIC) == 0
    assert server.api.metric(LOST_METRIC) == 0


# --------------------------------------------------------------------------------------------
# The log no longer holds some of it: quarantined and reported, never deleted
# --------------------------------------------------------------------------------------------


def test_a_restored_catalog_the_log_cannot_complete_is_reported_never_deleted(
    server_factory, tmp_path
):
    # 64 KiB log segments and requests of ~70 KB: the log rolls at every request and drops the
    # segments a flush made redundant.
    config = tmp_path / "restored-catalog.toml"
    config.write_text("[wal]\nsegment_bytes = 65536\n")
    server = server_factory("--config", str(config), flush_age="1s")
    names: dict[int, list[str]] = {}
    a_segments: list[str] = []
    for i in range(2):
        body, names[i] = make_request(i, 60, pad_bytes=1100)
        assert len(body) > 65536, len(body)
        a_segments.append(send_in_own_segment(server, body))
    a_names = [n for i in range(2) for n in names[i]]
    check_stored_once(server, a_names, WHERE, "after loading A")
    stop_ok(server)
    a_ranges = span_segments(server)
    assert sorted(a_ranges) == sorted(a_segments), a_ranges
    checkpoint_a = max(last for _, last in a_ranges.values())
    saved = tmp_path / "catalog-copy"
    save_catalog(server, saved, checkpoint_a)

    server.start()
    b_segments: dict[int, str] = {}

    def not_held() -> list[int]:
        first = wal_firsts(server)[0]
        seqs = span_segments(server)
        return [i for i, p in b_segments.items() if seqs[p][0] < first]

    i = 10
    # At least three B requests, and at least two the log no longer holds.
    while len(b_segments) < 3 or len(not_held()) < 2:
        assert len(b_segments) < 8, f"the log still holds {sorted(b_segments)}: {wal_firsts(server)}"
        body, names[i] = make_request(i, 60, pad_bytes=1100)
        b_segments[i] = send_in_own_segment(server, body)
        i += 1
    everything = [n for i in sorted(names) for n in names[i]]
    check_stored_once(server, everything, WHERE, "after loading B")
    stop_ok(server)

    before = span_segments(server)
    assert set(before) == set(a_segments) | set(b_segments.values()), before
    for p in b_segments.values():
        first, last = before[p]
        assert first == last, f"{p}: one request, one log record expected"
    log_first = wal_firsts(server)[0]
    gone = sorted(i for i, p in b_segments.items() if before[p][0] < log_first)
    held = sorted(i for i, p in b_segments.items() if before[p][0] >= log_first)
    assert len(gone) >= 2 and held, (gone, held, log_first)
    gone_paths = {b_segments[i]: digest(server.data_dir / b_segments[i]) for i in gone}
    held_paths = [b_segments[i] for i in held]
    # Sequence numbers above the restored checkpoint the log does not hold: exactly the
    # records of the B requests whose segments go to quarantine.
    lost_first, lost_last = checkpoint_a + 1, log_first - 1
    assert lost_last >= lost_first, (checkpoint_a, log_first)
    assert sorted(before[b_segments[i]][0] for i in gone) == list(
        range(lost_first, lost_last + 1)
    ), (checkpoint_a, log_first, {i: before[b_segments[i]] for i in gone})

    restore_catalog(server, saved)
    server.start()
    log = start_log(server)
    assert opened_checkpoint(log) == checkpoint_a, "the restored catalog's checkpoint"
    opened = lines_with(log, "span store opened")[0]
    assert int(field(opened, "orphans")) == len(b_segments), opened

    # The segments the log no longer holds: quarantined with an ERROR each, bytes unchanged.
    errors = lines_with(log, QUARANTINE_ERROR)
    assert len(errors) == len(gone_paths), "\n".join(errors)
    assert all(" ERROR " in e for e in errors), errors
    named = {p for p in gone_paths if any(f"path={p} " in e for e in errors)}
    assert named == set(gone_paths), errors
    for e in errors:
        p = field(e, "path")
        assert field(e, "quarantined") == f"quarantine/{p}", e
    assert quarantined(server) == gone_paths, "quarantine/ must hold exactly their bytes"
    assert_metric(server, QUARANTINED_METRIC, len(gone_paths))

    # The ones it holds: deleted, replayed, written again.
    warns = lines_with(log, REPLAYED_WARN)
    assert {p for p in held_paths if any(p in w for w in warns)} == set(held_paths), warns
    assert len(warns) == len(held_paths), warns
    assert not any(p in w for w in warns for p in gone_paths), warns

    # The sequence numbers in between: reported lost, in records.
    lost = lines_with(log, LOST_ERROR)
    assert len(lost) == 1, "\n".join(lost)
    assert " ERROR " in lost[0] and NO_SEGMENT_HOLDS in lost[0], lost[0]
    assert int(field(lost[0], "first_seq")) == lost_first, lost[0]
    assert int(field(lost[0], "last_seq")) == lost_last, lost[0]
    assert int(field(lost[0], "records")) == lost_last - lost_first + 1, lost[0]
    assert server.api.metric(LOST_METRIC) == lost_last - lost_first + 1
    assert server.api.get("/readyz", expect=None).status_code == 200

    # Every span of A and of the held B requests once; the quarantined ones' spans missing,
    # neither doubled nor silently present.
    kept = a_names + [n for i in held for n in names[i]]
    check_stored_once(server, kept, WHERE, "after restoring the old catalog")
    a_only = {p: before[p] for p in a_segments}
    rewritten = wait_flushed(server, a_only)
    assert covered(rewritten.values()) == covered(before[p] for p in held_paths), rewritten
    after = span_segments(server)
    assert after == {**a_only, **rewritten}, after
    check_stored_once(server, kept, WHERE, "after the replay was flushed")
    assert quarantined(server) == gone_paths
    for p in gone_paths:
        assert not (server.data_dir / p).exists(), p

    # Once more: nothing further quarantined, deleted or lost; counts unchanged.
    server.restart()
    log = start_log(server)
    for needle in (REPLAYED_WARN, QUARANTINE_ERROR, LOST_ERROR):
        assert not lines_with(log, needle), lines_with(log, needle)
    opened = lines_with(log, "span store opened")[0]
    assert int(field(opened, "orphans")) == 0, opened
    time.sleep(1.5)  # a flush age: spans a replay brought back would be flushed by now
    check_stored_once(server, kept, WHERE, "after another restart")
    assert span_segments(server) == after
    assert quarantined(server) == gone_paths
    assert server.api.metric(QUARANTINED_METRIC) == 0
    assert server.api.metric(LOST_METRIC) == 0
