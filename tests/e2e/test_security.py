"""Attacks on a running server, each written as the attacker would run it (issue 22).

Queries that cannot hurt ingest: a CPU-bound cross join runs on the query threads while OTLP
keeps being acknowledged and /readyz answers; it is cancelled at the SQL time limit and
SIGTERM still stops the server quickly; memory bombs are refused before the RSS grows.
"""

from __future__ import annotations

import threading
import time

import requests

from mtlib import eventually, metric_value, new_span_id, new_trace_id, now_ns, post_otlp_json, request_json, span_json

CROSS_JOIN = (
    "SELECT count(*) FROM spans a, spans b, spans c "
    "WHERE a.duration_ns + b.duration_ns > c.duration_ns"
)


def write_config(tmp_path, text: str):
    path = tmp_path / "meshtrace.toml"
    path.write_text(text)
    return str(path)


def load_spans(server, n: int) -> None:
    t = now_ns()
    for _ in range(n // 100):
        trace = new_trace_id().hex()
        spans = [span_json(trace, f"op{i}", t + i, t + 1000 + i) for i in range(100)]
        r = post_otlp_json(server, request_json("load", spans))
        assert r.status_code == 200, r.text


def ingest_once(server) -> float:
    trace = new_trace_id().hex()
    t = now_ns()
    started = time.monotonic()
    r = post_otlp_json(server, request_json("during", [span_json(trace, "op", t, t + 1000)]))
    assert r.status_code == 200, r.text
    return time.monotonic() - started


def rss_peak_mib(server) -> float:
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_runaway_cross_join_neither_stops_ingest_nor_shutdown(server_factory, tmp_path):
    config = write_config(tmp_path, '[query]\nsql_timeout = "6s"\nthreads = 1\n')
    server = server_factory("--config", config)
    load_spans(server, 2000)
    answers: list[requests.Response] = []

    def attack():
        answers.append(
            requests.post(f"{server.query_url}/api/v1/sql", json={"sql": CROSS_JOIN}, timeout=60)
        )

    attacker = threading.Thread(target=attack)
    started = time.monotonic()
    attacker.start()
    time.sleep(0.5)
    slowest_ready, slowest_ingest = 0.0, 0.0
    while time.monotonic() - started < 5:
        t = time.monotonic()
        assert requests.get(f"{server.query_url}/readyz", timeout=1).status_code == 200
        slowest_ready = max(slowest_ready, time.monotonic() - t)
        slowest_ingest = max(slowest_ingest, ingest_once(server))
    assert slowest_ready < 1, f"/readyz took {slowest_ready:.2f}s during the cross join"
    assert slowest_ingest < 1, f"an OTLP export took {slowest_ingest:.2f}s during the cross join"
    attacker.join(30)
    [answer] = answers
    assert answer.status_code == 504, answer.text
    assert time.monotonic() - started < 10, "the time limit was not enforced"
    # The cancelled plan left its thread: the next query answers at once.
    t = time.monotonic()
    [[n]] = server.api.sql_rows("SELECT count(*) FROM spans")
    assert int(n) >= 2000 and time.monotonic() - t < 3
    # A second runaway query is running when SIGTERM comes: the server still stops in time.
    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    time.sleep(1)
    stopping = time.monotonic()
    assert server.stop(timeout=10) == 0
    assert time.monotonic() - stopping < 10


def test_memory_bombs_are_refused_before_the_memory_grows(server_factory, tmp_path):
    config = write_config(tmp_path, "[query]\nmemory_mib = 256\n")
    server = server_factory("--config", config)
    load_spans(server, 200)
    before = rss_peak_mib(server)
    for bomb in [
        "SELECT repeat('x', 2000000000)",
        "SELECT length(repeat(service_name, 100000000)) FROM spans",
        "SELECT range(1, 10000000000)",
        "SELECT rpad('x', 2000000000, 'y')",
        "SELECT replace(repeat('x', 1000000), 'x', repeat('y', 1000000))",
        "SELECT concat(service_name, repeat(name, 100000)) FROM spans",
        "WITH a AS (SELECT repeat('x', 4000000) AS s) SELECT length(s || s || s || s || s) FROM a",
        "SELECT regexp_replace(repeat('x', 1000000), '(?:)', repeat('y', 1000), 'g')",
        # Wide values reach the limit in well under a second: narrow ones took 6 s unloaded
        # and past the 30 s query timeout on a busy CI machine.
        "SELECT array_agg(concat(value, repeat('x', 1000))) FROM generate_series(1, 1000000000)",
    ]:
        r = server.api.sql_response(bomb)
        assert r.status_code == 400, f"{bomb}: {r.status_code} {r.text[:300]}"
        assert "more memory" in r.json()["error"], r.text
    peak = rss_peak_mib(server)
    assert peak < before + 256 + 200, f"peak RSS {peak:.0f} MiB (was {before:.0f} before the bombs)"
    [[n]] = server.api.sql_rows("SELECT count(*) FROM spans")
    assert int(n) == 200


def test_queries_past_the_concurrency_limit_get_429_with_retry_after(server_factory, tmp_path):
    config = write_config(
        tmp_path, '[query]\nmax_concurrent = 1\nqueue_wait = "200ms"\nsql_timeout = "4s"\n'
    )
    server = server_factory("--config", config)
    load_spans(server, 2000)
    attacker = threading.Thread(target=server.api.sql_response, args=(CROSS_JOIN,), daemon=True)
    attacker.start()
    time.sleep(0.5)
    r = server.api.sql_response("SELECT 1")
    assert r.status_code == 429, r.text
    assert r.headers.get("Retry-After") == "1"
    assert "retry" in r.json()["error"]
    attacker.join(15)
    assert server.api.sql_rows("SELECT 1") == [[1]]


def test_a_span_dated_in_2100_is_rejected_and_its_batch_mates_kept(server):
    trace = new_trace_id().hex()
    t = now_ns()
    year_2100 = 4_102_444_800_000_000_000
    spans = [
        span_json(trace, "honest", t, t + 1000),
        span_json(trace, "forged", year_2100, year_2100 + 1000),
    ]
    r = post_otlp_json(server, request_json("clock", spans))
    assert r.status_code == 200, r.text
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert "more than 10m in the future" in partial["errorMessage"]
    got = server.api.trace(trace)
    assert [s["operationName"] for s in got["spans"]] == ["honest"]


def test_trace_id_lists_are_capped(server):
    ids = [new_trace_id().hex() for _ in range(1001)]
    r = server.api.get("/api/traces", params={"traceID": ids}, expect=400)
    assert "at most 1000" in r.json()["errors"][0]["msg"]
    server.api.get("/api/traces", params={"traceID": ids[:1000]})


def test_a_thousand_idle_connections_do_not_stop_ingest(server_factory, tmp_path):
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    config = write_config(
        tmp_path, '[listen.limits]\nmax_connections = 300\nheader_read_timeout = "5s"\n'
    )
    server = server_factory("--config", config)
    idle = []
    try:
        opening = time.monotonic()
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", server.otlp_http_port), timeout=5)
            idle.append(s)
        opened_in = time.monotonic() - opening
        # Ingest on the other ports and the query port answer at once meanwhile.
        t = time.monotonic()
        assert requests.get(f"{server.query_url}/readyz", timeout=1).status_code == 200
        zipkin = [{"traceId": new_trace_id().hex(), "id": "00000000000000a1", "name": "z",
                   "timestamp": now_ns() // 1000, "duration": 5, "localEndpoint": {"serviceName": "z"}}]
        r = requests.post(f"{server.zipkin_url}/api/v2/spans", json=zipkin, timeout=1)
        assert r.status_code == 202 and time.monotonic() - t < 2
        # Past the limit, connections are closed as soon as accepted, not left in the backlog
        # (all 700 when none of the first 300 timed out while the rest were opened).
        expected = 700 if opened_in < 4 else 1
        eventually(
            lambda: server.api.metric("meshtrace_connections_refused_total") >= expected or None,
            what=f"{expected} connections refused",
        )
        # The idle ones that were accepted are closed after the header timeout...
        time.sleep(6)

        # ...and the port serves again.
        assert ingest_once(server) < 2
    finally:
        for s in idle:
            s.close()


def test_made_up_proxy_names_cannot_grow_the_registry(server_factory, tmp_path):
    config = write_config(tmp_path, "[budgets]\nmax_proxies = 50\n")
    server = server_factory("--config", config)
    url = f"{server.query_url}/api/v1/priorities"
    with requests.Session() as s:
        for i in range(100):
            r = s.get(url, params={"service": "reviews", "node": f"forged-{i}"}, timeout=5)
            assert r.status_code == 200, r.text
        too_long = s.get(url, params={"service": "reviews", "node": "n" * 300}, timeout=5)
    assert too_long.status_code == 400 and "node" in too_long.text
    proxies = server.api.json("/api/v1/proxies")["proxies"]
    assert len(proxies) == 50
    assert server.api.metric("meshtrace_proxies_refused_total") == 50


def test_made_up_service_names_cannot_grow_the_name_lists(server_factory, tmp_path):
    config = write_config(tmp_path, "[storage]\nmax_services = 5\nmax_operations_per_service = 3\n")
    server = server_factory("--config", config)
    t = now_ns()
    traces = {}
    for i in range(20):
        trace = new_trace_id().hex()
        traces[f"svc-{i:02}"] = trace
        spans = [span_json(trace, f"op-{o}", t, t + 1000) for o in range(6)]
        assert post_otlp_json(server, request_json(f"svc-{i:02}", spans)).status_code == 200
    assert server.api.services() == [f"svc-{i:02}" for i in range(5)]
    assert len(server.api.operations("svc-00")) == 3
    text = server.api.metrics_text()
    assert metric_value(text, "meshtrace_names_refused_total", kind="service") >= 15
    assert metric_value(text, "meshtrace_names_refused_total", kind="operation") >= 15
    # Spans past the lists are stored and found all the same.
    found = server.api.find_traces(service="svc-19", lookback="1h")
    assert [tr["traceID"] for tr in found] == [traces["svc-19"]]


def test_a_connection_that_stalls_in_the_http2_preface_is_closed_at_its_max_age(server_factory, tmp_path):
    import socket

    config = write_config(tmp_path, '[listen.limits]\nmax_connection_age = "2s"\n')
    server = server_factory("--config", config)
    s = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    s.sendall(b"PRI * HTTP/2.0")  # half a preface, then nothing
    started = time.monotonic()
    assert s.recv(1) == b"", "the stalled connection got an answer instead of being closed"
    assert time.monotonic() - started < 8
    s.close()
    assert server.api.get("/readyz").status_code == 200


def test_one_client_address_cannot_take_every_connection(server_factory, tmp_path):
    import socket

    config = write_config(
        tmp_path, "[listen.limits]\nmax_connections = 1000\nmax_connections_per_ip = 20\n"
    )
    server = server_factory("--config", config)
    port = server.otlp_http_port

    def connect(source: str) -> socket.socket:
        s = socket.socket()
        s.settimeout(5)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        return s

    def served(source: str) -> bool:
        s = connect(source)
        try:
            s.sendall(b"GET /v1/traces HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1")
        except OSError:
            return False
        finally:
            s.close()

    refused_before = server.api.metric("meshtrace_connections_refused_total")
    idle = [connect("127.0.0.1") for _ in range(20)]
    try:
        # The 21st connection from the same address is closed at once...
        assert not served("127.0.0.1")
        eventually(
            lambda: server.api.metric("meshtrace_connections_refused_total") > refused_before
            or None,
            what="the connection past the per-address limit counted as refused",
        )
        # ...while another address is served as usual.
        assert served("127.0.0.2")
    finally:
        for s in idle:
            s.close()
    # Closed connections give their places back.
    eventually(lambda: served("127.0.0.1") or None, what="the address served again")


def test_made_up_classes_fold_into_other_past_the_limit(server_factory, tmp_path):
    """Forged `mesh.class` claims cannot grow the classes without bound: past `max_classes`
    a claimed class is folded into `other` in the derived tables (and so in budgets, the
    graph and the mapping), and counted."""
    config = write_config(tmp_path, "[provenance]\nmax_classes = 3\n")
    server = server_factory("--config", config, "--provenance-idle", "1s")
    t = now_ns()
    for i in range(10):
        span = span_json(new_trace_id().hex(), "GET /", t, t + 1000, attrs={"mesh.class": f"forged-{i}"})
        assert post_otlp_json(server, request_json("front", [span])).status_code == 200

    def classes():
        rows = server.api.sql_rows("SELECT class, count(*) AS n FROM traces GROUP BY class ORDER BY class")
        assert sum(n for _, n in rows) == 10, rows
        return rows

    rows = eventually(classes, timeout=30, what="ten derived traces")
    kept = [c for c, _ in rows if c != "other"]
    assert len(kept) == 3 and all(c.startswith("forged-") for c in kept), rows
    assert dict(rows)["other"] == 7
    assert server.api.metric("meshtrace_provenance_classes_folded_total") == 7
