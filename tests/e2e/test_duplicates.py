"""Exactly once ("storage faults"): spans with the same trace ID, span ID and identical content
are stored once, however the copy arrives: the same request twice, again after a flush, once
as OTLP/JSON and once as protobuf, or retried after the server was killed. Spans that share
IDs but differ in content (Zipkin's shared client/server spans) are all kept.
[storage] dedup_window_spans = 0 turns this off; meshtrace_spans_deduplicated_total counts the
copies dropped."""

from __future__ import annotations

import time

import requests

from mtlib import (
    check_stored_once,
    eventually,
    new_span_id,
    new_trace_id,
    now_ns,
    post_otlp_json,
    post_otlp_pb,
    request_json,
    request_pb,
    span_json,
    span_pb,
    wait_for_flush,
)

SERVICE = "dup-svc"
WHERE = f"service_name = '{SERVICE}'"
N = 50


def make_request(i: int, n: int = N):
    """Request i as protobuf bytes, and its span names ("req<i>-span<j>")."""
    trace = new_trace_id()
    t = now_ns()
    root = new_span_id()
    names = [f"req{i}-span{j}" for j in range(n)]
    spans = [span_pb(trace, names[0], t, t + 9_000_000, span_id=root, attrs={"req": i})] + [
        span_pb(trace, name, t + j, t + j + 1000, parent=root, kind=3, attrs={"req": i, "j": j})
        for j, name in enumerate(names[1:], start=1)
    ]
    return request_pb(SERVICE, spans).SerializeToString(), names


def post_ok(server, body: bytes) -> None:
    r = post_otlp_pb(server, body)
    assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"


def deduplicated(server) -> float:
    return server.api.metric("meshtrace_spans_deduplicated_total")


def assert_deduplicated(server, expected: int) -> None:
    def counted():
        got = deduplicated(server)
        assert got == expected, f"meshtrace_spans_deduplicated_total = {got}, expected {expected}"
        return True

    eventually(counted, timeout=5, what=f"meshtrace_spans_deduplicated_total == {expected}")


def write_config(tmp_path, text: str) -> str:
    path = tmp_path / "dedup.toml"
    path.write_text(text)
    return str(path)


def test_the_same_request_twice_back_to_back_is_stored_once(server):
    body, names = make_request(0)
    other, other_names = make_request(1)
    post_ok(server, body)
    post_ok(server, body)
    post_ok(server, other)
    check_stored_once(server, names + other_names, WHERE, "sent twice back to back")
    assert_deduplicated(server, N)
    # Flushed to Parquet: still once.
    wait_for_flush(server)
    time.sleep(1.5)
    check_stored_once(server, names + other_names, WHERE, "after the flush")
    # Both copies may sit in the write-ahead log: a crash and replay must not bring one back.
    server.kill9()
    server.start()
    check_stored_once(server, names + other_names, WHERE, "after kill -9 and replay")


def test_the_same_request_after_it_was_flushed_is_stored_once(server):
    body, names = make_request(0)
    post_ok(server, body)
    wait_for_flush(server)
    [[before]] = server.api.sql_rows(f"SELECT count(*) FROM spans WHERE {WHERE}")
    assert int(before) == N
    post_ok(server, body)
    check_stored_once(server, names, WHERE, "sent again after the flush")
    assert_deduplicated(server, N)
    # Long enough for a second flush of a copy, had one been buffered.
    time.sleep(2.5)
    check_stored_once(server, names, WHERE, "a flush age later")
    server.restart()
    check_stored_once(server, names, WHERE, "after a clean restart")


def test_the_same_spans_over_json_and_protobuf_are_stored_once(server):
    trace = new_trace_id()
    t = now_ns()
    ids = [new_span_id() for _ in range(N)]
    names = [f"req0-span{j}" for j in range(N)]
    attrs = [{"req": 0, "j": j, "tenant": "acme"} for j in range(N)]
    pb = request_pb(
        SERVICE,
        [
            span_pb(
                trace,
                names[j],
                t + j,
                t + j + 5000,
                span_id=ids[j],
                parent=ids[0] if j else None,
                attrs=attrs[j],
            )
            for j in range(N)
        ],
    )
    js = request_json(
        SERVICE,
        [
            span_json(
                trace.hex(),
                names[j],
                t + j,
                t + j + 5000,
                span_id_hex=ids[j].hex(),
                parent_hex=ids[0].hex() if j else None,
                attrs=attrs[j],
            )
            for j in range(N)
        ],
    )
    r = post_otlp_json(server, js)
    assert r.status_code == 200, r.text
    post_ok(server, pb.SerializeToString())
    check_stored_once(server, names, WHERE, "sent as OTLP/JSON, then as protobuf")
    assert_deduplicated(server, N)
    # The JSON copy again, once the spans are in Parquet.
    wait_for_flush(server)
    r = post_otlp_json(server, js)
    assert r.status_code == 200, r.text
    check_stored_once(server, names, WHERE, "the JSON copy again after the flush")
    assert_deduplicated(server, 2 * N)


def test_a_retry_after_kill9_is_stored_once(server):
    body, names = make_request(0)
    post_ok(server, body)
    # Acknowledged, then the server dies before the client hears of it: the client retries.
    server.kill9()
    server.start()
    post_ok(server, body)
    check_stored_once(server, names, WHERE, "a request retried after kill -9")
    assert_deduplicated(server, N)
    wait_for_flush(server)
    time.sleep(1.5)
    check_stored_once(server, names, WHERE, "after the flush")


def test_a_retry_after_kill9_following_a_flush_is_stored_once(server):
    # The crash comes after the spans were flushed to Parquet (and so may be gone from the
    # write-ahead log): the client's retry is still a copy.
    body, names = make_request(0)
    post_ok(server, body)
    wait_for_flush(server)
    time.sleep(1.5)
    check_stored_once(server, names, WHERE, "before the crash")
    server.kill9()
    server.start()
    post_ok(server, body)
    check_stored_once(server, names, WHERE, "a request retried after a flush and kill -9")
    assert_deduplicated(server, N)


def test_spans_sharing_ids_with_different_content_are_all_kept(server):
    trace = new_trace_id()
    t = now_ns()
    shared, other = new_span_id(), new_span_id()
    # Same IDs, different names (and kinds): a client span and the server span sharing its ID.
    post_ok(
        server,
        request_pb(
            SERVICE,
            [span_pb(trace, "req0-client", t, t + 9000, span_id=shared, kind=3, attrs={"x": 1})],
        ).SerializeToString(),
    )
    post_ok(
        server,
        request_pb(
            SERVICE,
            [span_pb(trace, "req1-server", t, t + 9000, span_id=shared, kind=2, attrs={"x": 1})],
        ).SerializeToString(),
    )
    # Same IDs and name, different attributes.
    for i, value in [(2, "a"), (3, "b")]:
        post_ok(
            server,
            request_pb(
                SERVICE,
                [span_pb(trace, "req-attrs", t, t + 9000, span_id=other, attrs={"v": value})],
            ).SerializeToString(),
        )

    def stored():
        rows = server.api.sql_rows(
            f"SELECT name, span_id, attributes['v'] AS v FROM spans WHERE {WHERE} "
            "ORDER BY name, v"
        )
        assert rows == [
            ["req-attrs", other.hex(), "a"],
            ["req-attrs", other.hex(), "b"],
            ["req0-client", shared.hex(), None],
            ["req1-server", shared.hex(), None],
        ], f"stored: {rows}"
        return True

    stored()
    [[n, distinct]] = server.api.sql_rows(
        f"SELECT count(*), count(DISTINCT span_id) FROM spans WHERE {WHERE}"
    )
    assert (int(n), int(distinct)) == (4, 2)
    assert deduplicated(server) == 0
    wait_for_flush(server)
    stored()

    # Zipkin's shared spans: the client and server halves of one RPC share the span ID.
    zipkin_trace = new_trace_id().hex()
    span_id = new_span_id().hex()
    ts = now_ns() // 1000
    halves = [("CLIENT", "zk-front", "req4-client"), ("SERVER", "zk-back", "req5-server")]
    for kind, service, name in halves:
        span = {
            "traceId": zipkin_trace,
            "id": span_id,
            "name": name,
            "kind": kind,
            "timestamp": ts,
            "duration": 1500,
            "localEndpoint": {"serviceName": service},
        }
        if kind == "SERVER":
            span["shared"] = True
        r = requests.post(f"{server.zipkin_url}/api/v2/spans", json=[span], timeout=30)
        assert r.status_code == 202, r.text

    def both_halves():
        rows = server.api.sql_rows(
            "SELECT service_name, name, trace_id, span_id FROM spans "
            "WHERE service_name IN ('zk-front', 'zk-back') ORDER BY name"
        )
        want = [
            ["zk-front", "req4-client", zipkin_trace, span_id],
            ["zk-back", "req5-server", zipkin_trace, span_id],
        ]
        assert rows == want, f"Zipkin shared span halves stored as {rows}"
        return True

    eventually(both_halves, timeout=5, what="both halves of the Zipkin shared span")
    assert deduplicated(server) == 0


def test_dedup_window_zero_turns_deduplication_off(server_factory, tmp_path):
    config = write_config(tmp_path, "[storage]\ndedup_window_spans = 0\n")
    server = server_factory("--config", config)
    body, names = make_request(0)
    post_ok(server, body)
    post_ok(server, body)
    counts = dict(
        server.api.sql_rows(f"SELECT name, count(*) FROM spans WHERE {WHERE} GROUP BY name")
    )
    assert {k: int(v) for k, v in counts.items()} == {n: 2 for n in names}
    assert deduplicated(server) == 0
