"""The memory budget ([memory] budget_mib): the server holds its resident memory under it by
refusing spans (429 / RESOURCE_EXHAUSTED with a retry delay) and queries past seven eighths of
it, and by completing open traces early and flushing; what it acknowledged is stored, and it
takes spans again once it is back under."""

from __future__ import annotations

import json
import os
import time

import grpc
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from mtlib import (
    error_message,
    eventually,
    metric_value,
    new_trace_id,
    now_ns,
    post_otlp_json,
    request_json,
    request_pb,
    span_json,
    span_pb,
)


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_over_the_budget_spans_and_queries_are_refused_with_a_retry_delay(server_factory):
    server = server_factory("--memory-budget-mib", "1")
    metrics = server.api.metrics_text()
    assert metric_value(metrics, "meshtrace_memory_budget_bytes") == 1 << 20
    eventually(
        lambda: metric_value(server.api.metrics_text(), "meshtrace_memory_resident_bytes") > 1 << 20,
        what="the resident size sampled",
    )
    trace = new_trace_id().hex()
    body = request_json("checkout", [span_json(trace, "GET /cart", now_ns(), now_ns() + 1000)])
    r = post_otlp_json(server, body)
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert "memory budget" in error_message(r), error_message(r)

    channel = grpc.insecure_channel(server.grpc_target)
    try:
        req = request_pb("checkout", [span_pb(new_trace_id(), "GET /cart", now_ns(), now_ns() + 1000)])
        try:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(req, timeout=30)
            raise AssertionError("a span was taken over the memory budget")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            assert "memory budget" in e.details()
    finally:
        channel.close()

    r = server.api.sql_response("SELECT count(*) FROM spans")
    assert r.status_code == 429, r.text
    assert "memory budget" in error_message(r)
    # Searches and trace lookups decode row groups too.
    for path in ("/api/traces?service=checkout&lookback=1h", f"/api/traces/{trace}"):
        r = server.api.get(path, expect=None)
        assert r.status_code == 429, (path, r.text)
        assert r.headers["Retry-After"] == "1"
        assert "memory budget" in error_message(r), error_message(r)
    # No new tenant's engine opens either.
    r = requests.get(
        f"{server.query_url}/api/services", headers={"X-Scope-OrgID": "acme"}, timeout=10
    )
    assert r.status_code == 429, r.text
    assert r.headers["Retry-After"] == "1"
    assert "tenant acme cannot be opened now" in error_message(r), error_message(r)
    assert not (server.data_dir / "tenants" / "acme").exists()
    # The server itself stays up and says why it refuses.
    assert requests.get(f"{server.query_url}/readyz", timeout=10).status_code == 200
    assert "refusing spans and queries and shedding open traces" in server.log_text()
    # The query pool alone (512 MiB by default) is past such a budget, and start-up said so.
    assert "one large query can make ingest refuse spans" in server.log_text()


def big_request(traces: int, spans_per_trace: int, start: int) -> tuple[str, int]:
    """OTLP/JSON with `traces` new traces whose spans carry ~1 KB of attributes each."""
    spans = []
    for _ in range(traces):
        trace = new_trace_id().hex()
        for i in range(spans_per_trace):
            spans.append(
                span_json(
                    trace,
                    f"GET /items/{i}",
                    start,
                    start + 1_000_000,
                    attrs={"payload": os.urandom(500).hex(), "http.status_code": 200},
                )
            )
    return json.dumps(request_json("catalog", spans)), len(spans)


def test_memory_stays_within_the_budget_and_nothing_acknowledged_is_lost(server_factory):
    # Traces stay open for a minute (the assembler holds their spans), so memory grows with
    # the spans sent until the budget stops it.
    probe = server_factory("--provenance-idle", "60s", "--memory-budget-mib", "0")
    idle_mib = status_kib(probe.proc.pid, "VmRSS") >> 10
    probe.stop()
    budget_mib = idle_mib + 250
    server = server_factory("--provenance-idle", "60s", "--memory-budget-mib", str(budget_mib))
    session = requests.Session()
    acknowledged = refused = accepted_after_refusal = 0
    retry_afters = set()
    deadline = time.monotonic() + 90
    start = now_ns()
    while time.monotonic() < deadline and (refused < 3 or accepted_after_refusal < 5):
        body, count = big_request(traces=50, spans_per_trace=8, start=start)
        r = session.post(
            server.traces_url, data=body, headers={"Content-Type": "application/json"}, timeout=60
        )
        if r.status_code == 200:
            acknowledged += count
            accepted_after_refusal += refused > 0
        else:
            assert r.status_code == 429, r.text
            assert "memory budget" in error_message(r), error_message(r)
            retry_afters.add(r.headers.get("Retry-After"))
            refused += 1
            time.sleep(int(r.headers["Retry-After"]))
    peak_mib = status_kib(server.proc.pid, "VmHWM") >> 10
    assert refused >= 1, f"the budget of {budget_mib} MiB was never reached ({acknowledged} spans)"
    assert retry_afters == {"1"}, retry_afters
    assert accepted_after_refusal >= 1, "the server never took spans again after shedding"
    assert peak_mib <= budget_mib, f"peak {peak_mib} MiB against a budget of {budget_mib} MiB"
    assert "completing the oldest open traces early" in server.log_text()
    eventually(
        lambda: server.api.sql_rows("SELECT count(*) FROM spans")[0][0] == acknowledged,
        timeout=30,
        what=f"all {acknowledged} acknowledged spans stored",
    )
