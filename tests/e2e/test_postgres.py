"""The ingest + query round trip with the PostgreSQL catalog (--catalog-url postgres://...),
across a flush, a clean restart and a kill -9."""

from __future__ import annotations

import subprocess

from mtlib import (
    eventually,
    new_span_id,
    new_trace_id,
    now_ns,
    post_otlp_pb,
    request_pb,
    span_pb,
    wait_for_flush,
)


def send_trace(server, service: str, n: int) -> tuple[str, tuple[str, int]]:
    trace = new_trace_id()
    t = now_ns()
    root = new_span_id()
    spans = [span_pb(trace, "pg-root", t, t + 9_000_000, span_id=root)] + [
        span_pb(trace, f"pg-op-{i % 3}", t + i, t + i + 1000, parent=root, kind=3)
        for i in range(n - 1)
    ]
    r = post_otlp_pb(server, request_pb(service, spans))
    assert r.status_code == 200, r.text
    return trace.hex(), (service, n)


def check(server, traces: dict[str, tuple[str, int]]) -> None:
    for trace_id, (service, n) in traces.items():
        t = eventually(lambda: server.api.trace(trace_id), what=f"trace {trace_id}")
        assert len(t["spans"]) == n
        assert {t["processes"][s["processID"]]["serviceName"] for s in t["spans"]} == {service}
    per_service: dict[str, int] = {}
    for service, n in traces.values():
        per_service[service] = per_service.get(service, 0) + n
    assert set(server.api.services()) == set(per_service)
    assert sorted(server.api.operations("pg-a")) == ["pg-op-0", "pg-op-1", "pg-op-2", "pg-root"]
    rows = server.api.sql_rows(
        "SELECT service_name, count(*) FROM spans GROUP BY service_name ORDER BY service_name"
    )
    assert [[s, int(c)] for s, c in rows] == sorted([s, n] for s, n in per_service.items())


def psql(db: str, sql: str) -> str:
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-At", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_postgres_catalog_round_trip(pg_server, pg_catalog_url):
    traces = dict([send_trace(pg_server, "pg-a", 50), send_trace(pg_server, "pg-b", 30)])
    check(pg_server, traces)
    wait_for_flush(pg_server)
    check(pg_server, traces)

    # The catalog lives in PostgreSQL, not in a SQLite file in the data dir.
    db = pg_catalog_url.rsplit("/", 1)[1]
    tables = psql(db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
    assert int(tables) >= 1, "no catalog tables in the PostgreSQL database"
    assert not list(pg_server.data_dir.rglob("*.db")), "a SQLite catalog was created"

    pg_server.restart()
    check(pg_server, traces)

    # Acknowledged but (very likely) not yet flushed: recovered from the WAL after kill -9.
    traces.update([send_trace(pg_server, "pg-b", 20)])
    pg_server.kill9()
    pg_server.start()
    check(pg_server, traces)
