"""A damaged Parquet span segment (its file deleted, truncated, or its footer overwritten) is
found at start-up and never silently drops spans nor breaks queries: while the write-ahead log
still holds its sequence numbers it is rebuilt from the log (every span back exactly once,
`meshtrace_segments_rebuilt_total`); once the log no longer does, its spans are reported lost
(an ERROR naming it at every start, `meshtrace_segments_damaged`) and every answer that may
lack them says so (SQL `"partial": true` with `skipped_segments`, a Jaeger `errors` entry with
code 206), while all other spans keep answering. Either way the damaged file is kept under
`quarantine/`."""

from __future__ import annotations

import time
from pathlib import Path

import faults
from faults import (
    assert_metric,
    lines_with,
    one_trace_request,
    send_in_own_segment,
    span_segments,
    start_log,
    wal_firsts,
)
from mtlib import check_stored_once, eventually, now_ns, post_otlp_pb

SERVICE = "segdmg-svc"
WHERE = f"service_name = '{SERVICE}'"
HOUR_NS = 3600 * 10**9
REBUILD_WARN = "damaged segment: rebuilding it from the write-ahead log"
LOST_ERROR = "damaged segment whose spans the write-ahead log no longer holds"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "segment-damage.toml"
    path.write_text(text)
    return str(path)


def make_request(i: int, n: int, start_ns: int, pad_bytes: int = 0):
    """Request i starting at start_ns (see `one_trace_request`)."""
    return one_trace_request(SERVICE, i, n, start_ns, pad_bytes)


def quarantined(server) -> set[str]:
    """Files under quarantine/, as paths relative to quarantine/."""
    return set(faults.quarantined(server))


def post_ok(server, body: bytes) -> None:
    r = post_otlp_pb(server, body)
    assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"


def oldest_wal_first_seq(server) -> int:
    """The first sequence number of the oldest write-ahead log segment (from its name)."""
    seqs = wal_firsts(server)
    assert seqs, f"no wal-*.log file in {server.data_dir / 'wal'}"
    return seqs[0]


def sql_flags(server) -> dict:
    """A whole SQL answer (with its "partial" and "skipped_segments")."""
    return server.api.sql(f"SELECT count(*) FROM spans WHERE {WHERE}")


# --------------------------------------------------------------------------------------------
# The log still holds the segments: rebuilt
# --------------------------------------------------------------------------------------------


def test_damaged_segments_the_log_holds_are_rebuilt(server_factory, tmp_path):
    config = write_config(tmp_path, "[wal]\nsegment_bytes = 1048576\n")
    server = server_factory("--config", config, flush_age="1s")
    names: dict[int, list[str]] = {}
    segments: dict[int, str] = {}
    for i in range(4):
        body, names[i], _ = make_request(i, 60, now_ns())
        segments[i] = send_in_own_segment(server, body)
    everything = [n for i in sorted(names) for n in names[i]]
    check_stored_once(server, everything, WHERE, "before the damage")
    assert sql_flags(server)["partial"] is False
    assert server.stop() == 0, server.log_tail()

    # The log must still hold both segments, or this is not the case under test.
    log_first = oldest_wal_first_seq(server)
    seqs = span_segments(server)
    deleted, truncated = segments[1], segments[2]
    for path in (deleted, truncated):
        assert seqs[path][0] >= log_first, (
            f"{path}: first seq {seqs[path][0]} below the log's first {log_first}"
        )
    (server.data_dir / deleted).unlink()
    t = server.data_dir / truncated
    size = t.stat().st_size
    with open(t, "r+b") as f:
        f.truncate(size // 2)

    server.start()
    log = start_log(server)
    warns = lines_with(log, REBUILD_WARN)
    assert len(warns) == 2, "expected 2 rebuild warnings, got:\n" + "\n".join(warns)
    assert all("WARN" in w for w in warns), warns
    assert {p for p in (deleted, truncated) if any(p in w for w in warns)} == {
        deleted,
        truncated,
    }, warns
    assert not lines_with(log, LOST_ERROR), lines_with(log, LOST_ERROR)
    # Rebuilt by the next flush: the counter counts both once it committed.
    assert_metric(server, "meshtrace_segments_rebuilt_total", 2, timeout=20)
    assert server.api.metric("meshtrace_segments_damaged") == 0
    check_stored_once(server, everything, WHERE, "after rebuilding two damaged segments")
    body = sql_flags(server)
    assert body["partial"] is False and "skipped_segments" not in body, body
    # Evidence kept: the truncated file under quarantine/ (the deleted one had no file).
    # (A rebuilt segment holds exactly the damaged one's records, so it may take its name.)
    assert quarantined(server) == {truncated}, quarantined(server)

    # Once more: nothing left to rebuild or report, still every span once.
    server.restart()
    log = start_log(server)
    for needle in (REBUILD_WARN, LOST_ERROR, "segment file damaged"):
        assert not lines_with(log, needle), lines_with(log, needle)
    check_stored_once(server, everything, WHERE, "after another restart")
    time.sleep(1.5)  # a flush age: a replay that brought spans back would be flushed by now
    check_stored_once(server, everything, WHERE, "a flush age after another restart")
    assert server.api.metric("meshtrace_segments_rebuilt_total") == 0
    assert server.api.metric("meshtrace_segments_damaged") == 0
    body = sql_flags(server)
    assert body["partial"] is False and "skipped_segments" not in body, body
    assert quarantined(server) == {truncated}


# --------------------------------------------------------------------------------------------
# The log no longer holds the segment: reported, never hidden
# --------------------------------------------------------------------------------------------


def jaeger_search(server, start_ns: int, end_ns: int) -> dict:
    return server.api.get(
        "/api/traces",
        params={
            "service": SERVICE,
            "start": start_ns // 1000,
            "end": end_ns // 1000,
            "limit": 100,
        },
    ).json()


def partial_entries(body: dict, path: str) -> list[dict]:
    return [
        e
        for e in body.get("errors") or []
        if e.get("code") == 206 and path in e.get("msg", "") and "partial answer" in e["msg"]
    ]


def test_a_damaged_segment_the_log_no_longer_holds_is_reported_not_hidden(
    server_factory, tmp_path
):
    # 64 KiB log segments and requests of ~70 KB: the log rolls at every request and drops
    # the segments a flush made redundant.
    config = write_config(tmp_path, "[wal]\nsegment_bytes = 65536\n")
    server = server_factory("--config", config, flush_age="1s")
    now = now_ns()
    count = 6
    starts = {i: now - (count + 1 - i) * HOUR_NS for i in range(count)}  # one hour each
    names: dict[int, list[str]] = {}
    traces: dict[int, str] = {}
    segments: dict[int, str] = {}
    for i in range(count):
        body, names[i], traces[i] = make_request(i, 60, starts[i], pad_bytes=1100)
        assert len(body) > 65536, len(body)
        segments[i] = send_in_own_segment(server, body)

    # A segment whose records the log dropped (the truncation follows each flush's commit).
    def dropped():
        first = oldest_wal_first_seq(server)
        seqs = span_segments(server)
        return [i for i in range(1, count - 1) if seqs[segments[i]][1] < first]

    gone = eventually(dropped, timeout=20, what="a span segment the log no longer holds")
    victim = gone[-1]
    path = segments[victim]
    everything = [n for i in sorted(names) for n in names[i]]
    check_stored_once(server, everything, WHERE, "before the damage")
    assert server.stop() == 0, server.log_tail()
    seqs = span_segments(server)
    assert seqs[path][0] < oldest_wal_first_seq(server), "the log holds the victim again"

    f = server.data_dir / path
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.seek(size - 100)
        fh.write(b"\0" * 100)
    assert f.stat().st_size == size

    kept = [n for i in sorted(names) if i != victim for n in names[i]]

    def check_reported(when: str) -> None:
        log = start_log(server)
        errors = lines_with(log, LOST_ERROR)
        assert len(errors) == 1, f"{when}: expected one ERROR naming {path}:\n" + "\n".join(
            errors
        )
        assert "ERROR" in errors[0] and path in errors[0], errors[0]
        assert not lines_with(log, REBUILD_WARN), lines_with(log, REBUILD_WARN)
        assert server.api.get("/readyz", expect=None).status_code == 200
        assert server.api.metric("meshtrace_segments_damaged") == 1
        assert server.api.metric("meshtrace_segments_rebuilt_total") == 0

        # Every other span answers, exactly once; the victim's are missing.
        check_stored_once(server, kept, WHERE, f"{when}: the spans outside the damaged segment")
        body = sql_flags(server)
        assert body["partial"] is True, body
        assert body.get("skipped_segments") == [path], body
        [[n]] = body["rows"]
        assert int(n) == len(kept), body

        # Jaeger search over the victim's hour: partial, naming the segment.
        t = starts[victim]
        answer = jaeger_search(server, t - HOUR_NS // 3, t + HOUR_NS // 3)
        assert answer.get("data") in (None, []), f"{when}: {str(answer)[:1000]}"
        assert len(partial_entries(answer, path)) == 1, f"{when}: {answer.get('errors')}"
        # Over another request's hour: complete, no errors.
        other = victim + 1
        t = starts[other]
        answer = jaeger_search(server, t - HOUR_NS // 3, t + HOUR_NS // 3)
        assert answer.get("errors") is None, f"{when}: {answer.get('errors')}"
        found = answer["data"] or []
        assert [x["traceID"] for x in found] == [traces[other]], f"{when}: {str(found)[:500]}"
        assert len(found[0]["spans"]) == 60

        # The lost trace: 404, and the answer says why it may be missing.
        r = server.api.get(f"/api/traces/{traces[victim]}", expect=404)
        errors = r.json().get("errors") or []
        assert any(e.get("code") == 404 for e in errors), errors
        assert len(partial_entries({"errors": errors}, path)) == 1, errors
        # Another trace is whole.
        r = server.api.get(f"/api/traces/{traces[other]}")
        [whole] = r.json()["data"]
        assert len(whole["spans"]) == 60
        assert all(e.get("code") == 206 for e in r.json().get("errors") or []), r.json()

        # The file is kept as evidence, not in the read path.
        assert quarantined(server) == {path}, quarantined(server)
        assert path not in span_segments(server)

    server.start()
    check_reported("after the damage")

    # Every start reports it again; nothing else changes.
    server.restart()
    check_reported("after another restart")
