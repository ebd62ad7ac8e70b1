"""What the receivers do with bad or excessive input: one test per rule of the contract."""

from __future__ import annotations

import gzip
import json
import threading

import grpc
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from mtlib import (
    error_message,
    eventually,
    metric_value,
    new_span_id,
    new_trace_id,
    now_ns,
    post_otlp_json,
    post_otlp_pb,
    request_json,
    request_pb,
    span_json,
    span_pb,
    v3_spans,
)


def good_request(service: str = "bad-input-svc") -> tuple[str, dict]:
    trace_id = new_trace_id().hex()
    t = now_ns()
    return trace_id, request_json(service, [span_json(trace_id, "ok", t, t + 1_000_000)])


# ---------------------------------------------------------------------------------------------
# Content type, decoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["otlp", "zipkin"])
def test_wrong_content_type_is_415(server, endpoint):
    if endpoint == "otlp":
        url, body = server.traces_url, json.dumps(good_request()[1])
    else:
        url, body = f"{server.zipkin_url}/api/v2/spans", "[]"
    r = requests.post(url, data=body, headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 415, r.text
    assert error_message(r)
    assert server.api.services() == []


def test_undecodable_protobuf_is_400_with_message(server):
    # Field 1 (resource_spans), length-delimited, claiming far more bytes than follow.
    r = post_otlp_pb(server, b"\x0a\xff\xff\xff\x0f\x01\x02")
    assert r.status_code == 400, r.text
    msg = error_message(r)
    assert len(msg) > 5, f"error message too vague: {msg!r}"


@pytest.mark.parametrize("endpoint", ["otlp", "zipkin"])
def test_invalid_json_is_400(server, endpoint):
    url = server.traces_url if endpoint == "otlp" else f"{server.zipkin_url}/api/v2/spans"
    r = requests.post(
        url,
        data='{"resourceSpans": [ {"scopeSpans": ',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    assert error_message(r)


# ---------------------------------------------------------------------------------------------
# Size limits
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_server(server_factory):
    return server_factory("--max-body-bytes", "65536", "--max-decompressed-bytes", "1048576")


def test_body_over_max_body_bytes_is_413(small_server):
    trace_id, body = good_request()
    body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"] = [
        {"key": f"k{i}", "value": {"stringValue": "x" * 900}} for i in range(100)
    ]
    raw = json.dumps(body).encode()
    assert len(raw) > 65536
    r = post_otlp_json(small_server, raw)
    assert r.status_code == 413, r.text
    # The same body gzip-compressed fits the compressed limit and is accepted.
    r = post_otlp_json(small_server, gzip.compress(raw), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert eventually(lambda: small_server.api.trace(trace_id), what="gzip body stored")


def test_gzip_bomb_over_max_decompressed_bytes_is_413(small_server):
    # Valid JSON once decompressed (20 MiB of whitespace), ~20 KiB compressed.
    raw = b'{"resourceSpans": []' + b" " * (20 << 20) + b"}"
    bomb = gzip.compress(raw, compresslevel=9)
    assert len(bomb) < 65536
    r = post_otlp_json(small_server, bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
    assert error_message(r)
    zr = requests.post(
        f"{small_server.zipkin_url}/api/v2/spans",
        data=gzip.compress(b"[" + b" " * (20 << 20) + b"]"),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert zr.status_code == 413, zr.text
    # The server is still serving.
    small_server.api.get("/readyz")
    trace_id, body = good_request()
    assert post_otlp_json(small_server, body).status_code == 200


# ---------------------------------------------------------------------------------------------
# Partial success
# ---------------------------------------------------------------------------------------------


def mixed_spans_pb(service: str):
    """2 good spans (trace A), one with a 5-byte trace ID, one ending before it starts (trace B)."""
    good, other = new_trace_id(), new_trace_id()
    t = now_ns()
    root = new_span_id()
    spans = [
        span_pb(good, "good-root", t, t + 2_000_000, span_id=root),
        span_pb(good, "good-child", t + 100, t + 1_000_000, parent=root),
        span_pb(b"\x01\x02\x03\x04\x05", "short-trace-id", t, t + 1000),
        span_pb(other, "ends-before-start", t + 5_000, t),
    ]
    return good.hex(), other.hex(), request_pb(service, spans)


def check_only_good_stored(server, service, good, other):
    trace = eventually(lambda: server.api.trace(good), what="good trace")
    assert sorted(s["operationName"] for s in trace["spans"]) == ["good-child", "good-root"]
    assert server.api.trace(other) is None
    rows = server.api.sql_rows(f"SELECT count(*) FROM spans WHERE service_name = '{service}'")
    assert int(rows[0][0]) == 2
    metrics = server.api.metrics_text()
    assert metric_value(metrics, "meshtrace_spans_rejected_total") == 2
    assert metric_value(metrics, "meshtrace_spans_accepted_total") == 2


def test_partial_success_http_json(server):
    good, other, req = mixed_spans_pb("partial-json")
    # Re-encode the same spans as OTLP JSON (hex IDs).
    spans = []
    for s in req.resource_spans[0].scope_spans[0].spans:
        spans.append(
            span_json(
                s.trace_id.hex(),
                s.name,
                s.start_time_unix_nano,
                s.end_time_unix_nano,
                span_id_hex=s.span_id.hex(),
                parent_hex=s.parent_span_id.hex() or None,
            )
        )
    r = post_otlp_json(server, request_json("partial-json", spans))
    assert r.status_code == 200, r.text
    ps = r.json().get("partialSuccess")
    assert ps is not None, r.text
    assert int(ps["rejectedSpans"]) == 2
    assert ps.get("errorMessage"), r.text
    check_only_good_stored(server, "partial-json", good, other)


def test_partial_success_http_protobuf(server):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    good, other, req = mixed_spans_pb("partial-pb")
    r = post_otlp_pb(server, req)
    assert r.status_code == 200, r.text
    assert "protobuf" in r.headers.get("Content-Type", "")
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 2
    assert resp.partial_success.error_message
    check_only_good_stored(server, "partial-pb", good, other)


def test_partial_success_grpc(server):
    good, other, req = mixed_spans_pb("partial-grpc")
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        resp = stub.Export(req, timeout=10)
    assert resp.partial_success.rejected_spans == 2
    assert resp.partial_success.error_message
    check_only_good_stored(server, "partial-grpc", good, other)


def test_grpc_all_good_has_no_partial_success(server):
    trace = new_trace_id()
    t = now_ns()
    req = request_pb("grpc-ok", [span_pb(trace, "fine", t, t + 10)])
    with grpc.insecure_channel(server.grpc_target) as channel:
        resp = trace_service_pb2_grpc.TraceServiceStub(channel).Export(
            req, timeout=10, compression=grpc.Compression.Gzip
        )
    assert resp.partial_success.rejected_spans == 0
    assert eventually(lambda: server.api.trace(trace.hex()), what="grpc span stored")


def test_grpc_undecodable_request_is_invalid_argument(server):
    export = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    counted = dict(protocol="otlp_grpc", outcome="invalid")
    before = server.api.metric("meshtrace_ingest_requests_total", **counted)
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(export)  # bytes in, bytes out: no protobuf on our side
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x0a\xff\xff\xff\xff\x0f not a request", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid otlp protobuf" in err.value.details()
    assert server.api.metric("meshtrace_ingest_requests_total", **counted) == before + 1
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Nope")
        with pytest.raises(grpc.RpcError) as err:
            call(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------------------------


def test_too_many_attributes_and_long_values_are_truncated(server_factory):
    server = server_factory("--max-attributes", "4", "--max-attribute-value-bytes", "16")
    trace_id = new_trace_id().hex()
    t = now_ns()
    original = {f"attr.{i}": f"value-{i}-" + "x" * 40 for i in range(10)}
    r = post_otlp_json(
        server, request_json("trunc-svc", [span_json(trace_id, "big", t, t + 1000, attrs=original)])
    )
    assert r.status_code == 200, r.text
    assert not r.json().get("partialSuccess"), "truncation must not reject the span"

    body = eventually(lambda: server.api.json(f"/api/v3/traces/{trace_id}"), what="trace")
    [(service, span)] = v3_spans(body)
    assert service == "trunc-svc"
    attrs = span.get("attributes") or []
    assert 1 <= len(attrs) <= 4, attrs
    for kv in attrs:
        value = kv["value"]["stringValue"]
        assert kv["key"] in original
        assert len(value.encode()) <= 16, kv
        assert original[kv["key"]].startswith(value), kv
    assert server.api.metric("meshtrace_values_truncated_total") >= 2


# ---------------------------------------------------------------------------------------------
# Overload
# ---------------------------------------------------------------------------------------------


def hammer(server, send, workers: int = 64, batch: int = 100, rounds: int = 4):
    """Sends `workers` batches at once (released by a barrier), repeating until one is refused.

    `send(trace_hex, request)` returns ("ok" | "refused" | "other", detail). Returns the acked
    trace IDs, the refused ones with their details, and anything unexpected.
    """
    acked, refused, other = [], [], []
    lock = threading.Lock()
    t0 = now_ns()

    def payload():
        trace = new_trace_id()
        spans = [
            span_pb(trace, f"op-{i % 7}", t0 + i, t0 + i + 1000, attrs={"i": i, "pad": "p" * 40})
            for i in range(batch)
        ]
        return trace.hex(), request_pb("overload-svc", spans)

    def worker(barrier, trace, req):
        barrier.wait(30)
        outcome, detail = send(trace, req)
        with lock:
            {"ok": acked, "refused": refused, "other": other}[outcome].append((trace, detail))

    for _round in range(rounds):
        barrier = threading.Barrier(workers)
        threads = [
            threading.Thread(target=worker, args=(barrier, *payload())) for _ in range(workers)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        if refused:
            break
    print(f"overload: {len(acked)} acked, {len(refused)} refused in {_round + 1} rounds")
    assert other == [], other[:5]
    assert refused, f"nothing refused with --queue-depth 1 and {workers} concurrent batches"
    assert acked, "every request was refused"

    rows = server.api.sql_rows(
        "SELECT trace_id, count(*) AS n FROM spans WHERE service_name = 'overload-svc' "
        "GROUP BY trace_id"
    )
    stored = {r[0]: int(r[1]) for r in rows}
    missing = [t for t, _ in acked if stored.get(t) != batch]
    assert missing == [], f"{len(missing)} acknowledged batches not fully stored"
    assert not ({t for t, _ in refused} & set(stored)), "a refused batch was stored"
    assert server.api.metric("meshtrace_spans_accepted_total") == batch * len(acked)
    return acked, refused


def test_overload_http_is_429_with_retry_after(server_factory):
    """--queue-depth 1 and 64 concurrent small batches. Not strictly deterministic (two WAL
    appends must be pending at once); in practice most rounds refuse dozens."""
    server = server_factory("--queue-depth", "1")
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))

    def send(trace, req):
        r = session.post(
            server.traces_url,
            data=req.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=60,
        )
        if r.status_code == 200:
            return "ok", ""
        if r.status_code == 429:
            return "refused", (r.headers.get("Retry-After", ""), error_message(r))
        return "other", f"{r.status_code}: {r.text[:200]}"

    _, refused = hammer(server, send)
    for _, (retry_after, message) in refused:
        assert retry_after.strip().isdigit() and int(retry_after) >= 1, retry_after
        assert message


def test_overload_grpc_is_resource_exhausted(server_factory):
    server = server_factory("--queue-depth", "1")
    channel = grpc.insecure_channel(server.grpc_target)
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)

    def send(trace, req):
        try:
            stub.Export(req, timeout=60)
            return "ok", ""
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return "refused", e.details()
            return "other", f"{e.code()}: {e.details()}"

    try:
        hammer(server, send)
    finally:
        channel.close()
