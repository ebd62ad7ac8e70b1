"""Helpers shared by the storage-fault tests (damaged segments, restored catalogs): requests
whose spans name themselves, the span segment and write-ahead log files of a data directory,
one start's log lines, and what sits under quarantine/."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from mtlib import eventually, new_span_id, new_trace_id, now_ns, post_otlp_pb, request_pb, span_pb

SEGMENT = re.compile(r"^seg-(\d+)-(\d+).*\.parquet$")
WAL = re.compile(r"^wal-(\d{20})\.log$")


def one_trace_request(
    service: str, i: int, n: int, start_ns: int | None = None, pad_bytes: int = 0
) -> tuple[bytes, list[str], str]:
    """Request i as protobuf bytes: one trace of n spans named "req<i>-span<j>" starting at
    start_ns (now by default, + j µs); returns (body, span names, trace ID hex)."""
    trace = new_trace_id()
    root = new_span_id()
    start = now_ns() if start_ns is None else start_ns
    names = [f"req{i}-span{j}" for j in range(n)]
    spans = []
    for j, name in enumerate(names):
        attrs = {"req": i, "j": j}
        if pad_bytes:
            # Random, so neither the log nor anything else can make it small.
            attrs["pad"] = os.urandom(pad_bytes // 2).hex()
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
    return request_pb(service, spans).SerializeToString(), names, trace.hex()


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


def start_log(server, start: int | None = None) -> str:
    """The log lines of one start of the server (the current one by default)."""
    start = start or server.starts
    text = server.log_text()
    marker = f"=== start #{start}:"
    assert marker in text, f"no {marker!r} in {server.log_path}"
    return text.split(marker, 1)[1].split("\n=== start #", 1)[0]


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


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
