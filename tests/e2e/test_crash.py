"""Crash safety: `kill -9` during ingest loses no acknowledged span and duplicates none, both
with only the write-ahead log and when WAL and Parquet segments overlap."""

from __future__ import annotations

import threading
import time

import requests

from mtlib import (
    eventually,
    new_span_id,
    new_trace_id,
    now_ns,
    request_pb,
    span_pb,
    wait_for_flush,
)

SERVICE = "crash-svc"
BATCH = 200
THREADS = 4


class Ingest:
    """Threads posting 200-span protobuf batches (one fresh trace ID each) until stopped."""

    def __init__(self, server) -> None:
        self.server = server
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: list[str] = []
        self.attempted: list[str] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(THREADS)]

    def _run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            trace = new_trace_id()
            t = now_ns()
            root = new_span_id()
            spans = [span_pb(trace, "root", t, t + 5_000_000, span_id=root)] + [
                span_pb(trace, f"child-{i % 5}", t + i, t + i + 1000, parent=root, attrs={"i": i})
                for i in range(BATCH - 1)
            ]
            body = request_pb(SERVICE, spans).SerializeToString()
            with self.lock:
                self.attempted.append(trace.hex())
            try:
                r = session.post(
                    self.server.traces_url,
                    data=body,
                    headers={"Content-Type": "application/x-protobuf"},
                    timeout=20,
                )
            except requests.RequestException:
                # The server was killed: this batch is not acknowledged.
                if self.stop.is_set() or not self.server.running:
                    return
                time.sleep(0.05)
                continue
            if r.status_code == 200:
                with self.lock:
                    self.acked.append(trace.hex())
            elif r.status_code == 429:
                time.sleep(0.05)
            else:
                with self.lock:
                    self.errors.append(f"{r.status_code}: {r.text[:200]}")

    def __enter__(self) -> "Ingest":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


def stored_counts(server) -> dict[str, int]:
    """trace_id -> span count over SQL, paged so no answer is truncated."""
    out: dict[str, int] = {}
    page, offset = 200, 0
    while True:
        rows = server.api.sql_rows(
            "SELECT trace_id, count(*) AS n FROM spans "
            f"WHERE service_name = '{SERVICE}' GROUP BY trace_id ORDER BY trace_id "
            f"LIMIT {page} OFFSET {offset}"
        )
        for tid, n in rows:
            assert tid not in out, f"trace {tid} returned twice by GROUP BY"
            out[tid] = int(n)
        if len(rows) < page:
            return out
        offset += page


def check_exactly_once(server, acked: list[str], attempted: list[str]) -> None:
    counts = stored_counts(server)
    missing = [t for t in acked if counts.get(t) != BATCH]
    assert not missing, (
        f"{len(missing)} of {len(acked)} acknowledged batches lost or incomplete, e.g. "
        f"{[(t, counts.get(t)) for t in missing[:5]]}"
    )
    unknown = set(counts) - set(attempted)
    assert not unknown, f"stored traces that were never sent: {sorted(unknown)[:5]}"
    over = {t: n for t, n in counts.items() if n > BATCH}
    assert not over, f"duplicated spans in {len(over)} traces, e.g. {list(over.items())[:5]}"
    [[n, distinct]] = server.api.sql_rows(
        f"SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans WHERE service_name = '{SERVICE}'"
    )
    assert int(n) == int(distinct), f"{n} rows but {distinct} distinct span IDs"
    assert BATCH * len(acked) <= int(n) <= BATCH * len(attempted)
    # A user opening an acknowledged trace sees all of it.
    for t in acked[:: max(1, len(acked) // 3)][:3]:
        trace = server.api.trace(t)
        assert trace is not None and len(trace["spans"]) == BATCH


def test_kill9_mid_ingest_loses_no_acknowledged_span(server):
    # Round 1: WAL only (kill within the first flush age or so).
    with Ingest(server) as ingest:
        eventually(lambda: ingest.acked_count() >= 3, timeout=30, what="some acked batches")
        time.sleep(1.5)
        server.kill9()
    assert ingest.errors == [], ingest.errors[:5]
    acked, attempted = list(ingest.acked), list(ingest.attempted)
    assert len(acked) >= 3
    print(f"round 1: {len(acked)} batches acked of {len(attempted)} sent")

    server.start()
    check_exactly_once(server, acked, attempted)

    # Round 2: let the replayed data flush, then kill again after a flush during ingest, so
    # the restart sees spans both in Parquet segments and still in the WAL.
    wait_for_flush(server)
    flushes = server.api.metric("meshtrace_flushes_total")
    with Ingest(server) as ingest2:
        eventually(
            lambda: server.api.metric("meshtrace_flushes_total") > flushes
            and ingest2.acked_count() >= 3,
            timeout=30,
            what="a flush during ingest",
        )
        time.sleep(0.7)
        server.kill9()
    assert ingest2.errors == [], ingest2.errors[:5]
    acked += ingest2.acked
    attempted += ingest2.attempted
    print(f"round 2: {len(ingest2.acked)} batches acked of {len(ingest2.attempted)} sent")

    server.start()
    check_exactly_once(server, acked, attempted)
    # The replayed WAL is flushed to Parquet without duplicating what was already there.
    wait_for_flush(server)
    check_exactly_once(server, acked, attempted)

    # A clean shutdown (flush on SIGTERM) and start again: still exactly once.
    server.restart()
    check_exactly_once(server, acked, attempted)
