"""A catalog restored from an older copy (catalog.db saved while the server was stopped, more
spans stored since, the copy put back) leaves Parquet segment files without a catalog row.
At start-up such a file is deleted only when the write-ahead log still holds its sequence
numbers (the log replays them: every span back exactly once); otherwise it is moved to
`quarantine/<same path>` with an ERROR and `meshtrace_segments_quarantined_total`, never
deleted, and the sequence numbers above the restored checkpoint that no log segment holds are
reported lost (an ERROR naming the range, `meshtrace_wal_records_lost_total`, in records)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

from mtlib import (
    check_stored_once,
    eventually,
    new_span_id,
    new_trace_id,
    now_ns,
    post_otlp_pb,
    request_pb,
    span_pb,
)

SERVICE = "restored-catalog-svc"
WHERE = f"service_name = '{SERVICE}'"
SEGMENT = re.compile(r"^seg-(\d+)-(\d+)\.parquet$")
WAL = re.compile(r"^wal-(\d{20})\.log$")
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
    """Request i as protobuf bytes: one trace of n spans named "req<i>-span<j>"; returns
    (body, span names)."""
    trace = new_trace_id()
    root = new_span_id()
    start = now_ns()
    names = [f"req{i}-span{j}" for j in range(n)]
    spans = []
    for j, name in enumerate(names):
        attrs = {"req": i, "j": j}
        if pad_bytes:
            attrs["pad"] = os.urandom(pad_bytes // 2).hex()  # random: nothing compresses it
        t = start + j * 1000
        spans.append(
            span_pb(
                trace,
                name,
                t,
                t + 500_000,
                span_id=root if j == 0 else None,
                parent=None if j == 0 else root,
                kind=2 if j == 0 else 3,
                attrs=attrs,
            )
        )
    return request_pb(SERVICE, spans).SerializeToString(), names


def span_segments(server) -> dict[str, tuple[int, int]]:
    """Parquet span segments under spans/ (quarantine/ excluded): path relative to the data
    dir -> (first seq, last seq) from the file name."""
    out = {}
    spans_dir = server.data_dir / "spans"
    for p in sorted(spans_dir.rglob("*.parquet")) if spans_dir.is_dir() else []:
        m = SEGMENT.match(p.name)
        assert m, f"unexpected Parquet file name {p}"
        out[p.relative_to(server.data_dir).as_posix()] = (int(m[1]), int(m[2]))
    return out


def wal_firsts(server) -> list[int]:
    """The first sequence numbers of the log segments (from their names), ascending."""
    wal = server.data_dir / "wal"
    return sorted(int(m[1]) for p in wal.iterdir() if (m := WAL.match(p.name)))


def send_in_own_segment(server, body: bytes) -> str:
    """Posts one request and waits until a flush committed it in a new span segment; returns
    that segment's path (relative to the data dir)."""
    before = set(span_segments(server))
    flushes = server.api.metric("meshtrace_flushes_total")
    r = post_otlp_pb(server, body)
    assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"

    def new_segment():
        new = set(span_segments(server)) - before
        assert len(new) <= 1, f"one request was written to several segments: {sorted(new)}"
        # The file is written before its catalog commit, which the counter follows.
        return server.api.metric("meshtrace_flushes_total") > flushes and next(iter(new), None)

    return eventually(new_segment, timeout=20, what="a flush committing a new span segment")


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


def start_log(server, start: int | None = None) -> str:
    """The log lines of one start of the server (the current one by default)."""
    start = start or server.starts
    text = server.log_text()
    marker = f"=== start #{start}:"
    assert marker in text, f"no {marker!r} in {server.log_path}"
    return text.split(marker, 1)[1].split("\n=== start #", 1)[0]


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def field(line: str, name: str) -> str:
    """The value of a `name=value` field of a log line."""
    m = re.search(rf"\b{re.escape(name)}=(\S+)", line)
    assert m, f"no {name}= in {line!r}"
    return m[1]


def opened_checkpoint(log: str) -> int:
    """The catalog checkpoint the store reported at open."""
    [line] = lines_with(log, "span store opened")
    return int(field(line, "checkpoint"))


def quarantined(server) -> dict[str, str]:
    """Files under quarantine/: path relative to quarantine/ -> sha256."""
    q = server.data_dir / "quarantine"
    if not q.is_dir():
        return {}
    return {
        p.relative_to(q).as_posix(): digest(p) for p in sorted(q.rglob("*")) if p.is_file()
    }


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_metric(server, name: str, want: float, timeout: float = 10.0) -> None:
    def check():
        got = server.api.metric(name)
        assert got == want, f"{name} = {got}, expected {want}"
        return True

    eventually(check, timeout=timeout, what=f"{name} == {want}")


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
