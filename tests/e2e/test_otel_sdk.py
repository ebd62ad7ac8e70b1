"""The real OpenTelemetry Python SDK exporting to meshtrace (OTLP gRPC and OTLP HTTP protobuf),
then every read API answering the same before the flush, after the flush (Parquet) and
after a restart."""

from __future__ import annotations

import datetime as dt
import json

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

from mtlib import (
    eventually,
    iso,
    metric_value,
    micros,
    norm_id,
    span_service,
    tag_map,
    trace_ids,
    v3_attr,
    v3_spans,
    wait_for_flush,
)

FRONTEND, PROXY, CART = "shop-frontend", "shop-proxy", "shop-cart"
UPSTREAM = "outbound|8080||cart.default.svc.cluster.local"


class RecordingExporter(SpanExporter):
    """Wraps an OTLP exporter and keeps every export's result, so a refused export fails
    the test as such instead of as a missing trace."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.results: list[SpanExportResult] = []

    def export(self, spans):
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def make_exporter(server, protocol: str, gzip: bool):
    if protocol == "grpc":
        return GrpcExporter(
            endpoint=f"http://{server.grpc_target}",
            insecure=True,
            timeout=10,
            compression=grpc.Compression.Gzip if gzip else None,
        )
    return HttpExporter(
        endpoint=server.traces_url,
        timeout=10,
        compression=HttpCompression.Gzip if gzip else HttpCompression.NoCompression,
    )


def emit_spans(server, protocol: str, gzip: bool):
    """Emits a 4-span tree over 3 services plus a 1-span trace it links to.

    Returns (main trace id hex, linked trace id hex, {span name: ReadableSpan}).
    """
    memory = InMemorySpanExporter()
    providers = {}
    exporters = []
    for svc in (FRONTEND, PROXY, CART):
        tp = TracerProvider(
            resource=Resource.create({"service.name": svc, "deployment.environment": "e2e"})
        )
        exporter = RecordingExporter(make_exporter(server, protocol, gzip))
        exporters.append(exporter)
        tp.add_span_processor(BatchSpanProcessor(exporter))
        tp.add_span_processor(SimpleSpanProcessor(memory))
        providers[svc] = tp
    t_front = providers[FRONTEND].get_tracer("e2e.frontend", "1.2.3")
    t_proxy = providers[PROXY].get_tracer("envoy")
    t_cart = providers[CART].get_tracer("e2e.cart")

    with t_cart.start_as_current_span("cart.batch-flush", kind=SpanKind.INTERNAL) as batch:
        batch.set_attribute("batch.size", 17)
    with t_front.start_as_current_span(
        "GET /checkout",
        kind=SpanKind.SERVER,
        attributes={"http.method": "GET", "http.route": "/checkout", "http.status_code": 200},
    ) as root:
        ctx = trace.set_span_in_context(root)
        with t_proxy.start_as_current_span(
            "egress cart",
            context=ctx,
            kind=SpanKind.CLIENT,
            attributes={
                "component": "proxy",
                "upstream_cluster": UPSTREAM,
                "http.status_code": 201,
                "retry": True,
                "latency.ratio": 0.25,
            },
        ) as egress:
            ctx2 = trace.set_span_in_context(egress)
            with t_cart.start_as_current_span(
                "POST /cart/add",
                context=ctx2,
                kind=SpanKind.SERVER,
                attributes={"http.status_code": 201, "cart.items": 3},
                links=[Link(batch.get_span_context(), {"link.reason": "batched"})],
            ) as add:
                add.add_event("cache.miss", {"cache.key": "user-42", "attempt": 2})
        with t_front.start_as_current_span("render", context=ctx, kind=SpanKind.INTERNAL):
            pass

    for tp in providers.values():
        assert tp.force_flush(10_000), "force_flush timed out"
    for tp in providers.values():
        tp.shutdown()
    results = [r for e in exporters for r in e.results]
    assert results and all(r == SpanExportResult.SUCCESS for r in results), results
    spans = {s.name: s for s in memory.get_finished_spans()}
    assert len(spans) == 5
    main = format(spans["GET /checkout"].context.trace_id, "032x")
    linked = format(spans["cart.batch-flush"].context.trace_id, "032x")
    return main, linked, spans


def sid(span) -> str:
    return format(span.context.span_id, "016x")


def check_jaeger_trace(jt: dict, main: str, linked: str, spans: dict) -> None:
    """Everything a user would check in the Jaeger UI's trace view."""
    assert jt["traceID"] == main
    assert len(jt["spans"]) == 4
    by_name = {s["operationName"]: s for s in jt["spans"]}
    assert set(by_name) == {"GET /checkout", "egress cart", "POST /cart/add", "render"}
    expected_service = {
        "GET /checkout": FRONTEND,
        "render": FRONTEND,
        "egress cart": PROXY,
        "POST /cart/add": CART,
    }
    parent_of = {"egress cart": "GET /checkout", "render": "GET /checkout", "POST /cart/add": "egress cart"}
    for name, js in by_name.items():
        sent = spans[name]
        assert js["traceID"] == main
        assert js["spanID"] == sid(sent)
        assert span_service(jt, js) == expected_service[name]
        assert abs(js["startTime"] - sent.start_time // 1000) <= 1
        assert abs(js["duration"] - (sent.end_time - sent.start_time) // 1000) <= 1
        child_of = [r for r in js.get("references") or [] if r["refType"] == "CHILD_OF"]
        if name in parent_of:
            assert [(r["traceID"], r["spanID"]) for r in child_of] == [
                (main, sid(spans[parent_of[name]]))
            ], js["references"]
        else:
            assert child_of == [], js["references"]

    egress = tag_map(by_name["egress cart"]["tags"])
    assert egress["component"] == ("string", "proxy")
    assert egress["upstream_cluster"] == ("string", UPSTREAM)
    assert egress["http.status_code"] == ("int64", 201)
    assert egress["retry"] == ("bool", True)
    assert egress["latency.ratio"] == ("float64", 0.25)
    root = tag_map(by_name["GET /checkout"]["tags"])
    assert root["http.method"] == ("string", "GET")
    assert root["http.status_code"] == ("int64", 200)

    add = by_name["POST /cart/add"]
    follows = [r for r in add.get("references") or [] if r["refType"] == "FOLLOWS_FROM"]
    assert [(r["traceID"], r["spanID"]) for r in follows] == [
        (linked, sid(spans["cart.batch-flush"]))
    ], add["references"]
    assert len(add["logs"]) == 1, add["logs"]
    log = add["logs"][0]
    assert abs(log["timestamp"] - spans["POST /cart/add"].events[0].timestamp // 1000) <= 1
    fields = tag_map(log["fields"])
    assert fields["event"] == ("string", "cache.miss")
    assert fields["cache.key"] == ("string", "user-42")
    assert fields["attempt"] == ("int64", 2)

    proc_tags = tag_map(jt["processes"][add["processID"]]["tags"])
    assert proc_tags["deployment.environment"] == ("string", "e2e")


def check_v3_trace(body: dict, main: str, linked: str, spans: dict) -> None:
    flat = v3_spans(body)
    assert len(flat) == 4
    by_name = {s["name"]: (svc, s) for svc, s in flat}
    assert {n: svc for n, (svc, _) in by_name.items()} == {
        "GET /checkout": FRONTEND,
        "render": FRONTEND,
        "egress cart": PROXY,
        "POST /cart/add": CART,
    }
    for name, (_, s) in by_name.items():
        assert norm_id(s["traceId"]) == main
        assert norm_id(s["spanId"]) == sid(spans[name])
        assert int(s["startTimeUnixNano"]) // 1000 == spans[name].start_time // 1000
    assert norm_id(by_name["POST /cart/add"][1]["parentSpanId"]) == sid(spans["egress cart"])
    assert not by_name["GET /checkout"][1].get("parentSpanId")
    assert by_name["GET /checkout"][1]["kind"] in (2, "SPAN_KIND_SERVER")
    assert by_name["egress cart"][1]["kind"] in (3, "SPAN_KIND_CLIENT")
    status = v3_attr(by_name["egress cart"][1], "http.status_code")
    assert status is not None and int(status["intValue"]) == 201, status
    assert v3_attr(by_name["egress cart"][1], "component") == {"stringValue": "proxy"}
    add = by_name["POST /cart/add"][1]
    assert [e["name"] for e in add.get("events") or []] == ["cache.miss"]
    links = add.get("links") or []
    assert [(norm_id(l["traceId"]), norm_id(l["spanId"])) for l in links] == [
        (linked, sid(spans["cart.batch-flush"]))
    ]


def snapshot(server, main: str, linked: str, spans: dict) -> dict:
    """Reads every API a user would, checks it, and returns a normalized view to compare."""
    api = server.api
    now = dt.datetime.now(dt.timezone.utc)
    start_us, end_us = micros(now - dt.timedelta(hours=1)), micros(now + dt.timedelta(minutes=5))
    window = {"start": start_us, "end": end_us, "limit": 20}

    jt = api.trace(main)
    assert jt is not None, f"trace {main} not found"
    check_jaeger_trace(jt, main, linked, spans)
    normalized = sorted(
        (
            s["spanID"],
            s["operationName"],
            span_service(jt, s),
            s["startTime"],
            s["duration"],
            json.dumps(sorted(s.get("references") or [], key=json.dumps), sort_keys=True),
            json.dumps(sorted(s.get("tags") or [], key=lambda t: t["key"]), sort_keys=True),
            json.dumps(s.get("logs") or [], sort_keys=True),
        )
        for s in jt["spans"]
    )

    assert set(api.services()) == {FRONTEND, PROXY, CART}
    ops = {svc: sorted(api.operations(svc)) for svc in (FRONTEND, PROXY, CART)}
    assert ops == {
        FRONTEND: ["GET /checkout", "render"],
        PROXY: ["egress cart"],
        CART: ["POST /cart/add", "cart.batch-flush"],
    }
    server_ops = api.json("/api/operations", {"service": FRONTEND, "spanKind": "server"})["data"]
    assert server_ops == [{"name": "GET /checkout", "spanKind": "server"}]
    client_ops = api.json("/api/operations", {"service": PROXY, "spanKind": "client"})["data"]
    assert client_ops == [{"name": "egress cart", "spanKind": "client"}]

    found = {
        "cart": api.find_traces(service=CART, **window),
        "render": api.find_traces(service=FRONTEND, operation="render", **window),
        "cluster": api.find_traces(
            service=PROXY, tags=json.dumps({"upstream_cluster": UPSTREAM}), **window
        ),
        # Jaeger's repeated `tag=key:value` form.
        "status": api.find_traces(
            service=PROXY, tag=["http.status_code:201", "component:proxy"], **window
        ),
        "nomatch": api.find_traces(service=PROXY, tags=json.dumps({"component": "nope"}), **window),
        "tooslow": api.find_traces(service=FRONTEND, minDuration="1h", **window),
        "lookback": api.find_traces(service=CART, lookback="1h", limit=20),
    }
    assert trace_ids(found["cart"]) == {main, linked}
    for t in found["cart"]:
        assert len(t["spans"]) == (4 if t["traceID"] == main else 1)
    assert trace_ids(found["render"]) == {main}
    assert trace_ids(found["cluster"]) == {main}
    assert trace_ids(found["status"]) == {main}
    assert found["nomatch"] == []
    assert found["tooslow"] == []
    assert trace_ids(found["lookback"]) == {main, linked}
    limit1 = api.find_traces(service=CART, **{**window, "limit": 1})
    assert len(limit1) == 1 and trace_ids(limit1) <= {main, linked}

    v3 = api.json(f"/api/v3/traces/{main}")
    check_v3_trace(v3, main, linked, spans)
    # Parameter names as in the api_v3 OpenAPI spec, then the proto (snake_case) spelling.
    v3_search = api.json(
        "/api/v3/traces",
        {
            "query.serviceName": CART,
            "query.startTimeMin": iso(now - dt.timedelta(hours=1)),
            "query.startTimeMax": iso(now + dt.timedelta(minutes=5)),
            "query.searchDepth": 20,
        },
    )
    assert {norm_id(s["traceId"]) for _, s in v3_spans(v3_search)} == {main, linked}
    v3_snake = api.json(
        "/api/v3/traces",
        {
            "query.service_name": FRONTEND,
            "query.operation_name": "render",
            "query.start_time_min": iso(now - dt.timedelta(hours=1)),
            "query.start_time_max": iso(now + dt.timedelta(minutes=5)),
            "query.num_traces": 20,
        },
    )
    assert {norm_id(s["traceId"]) for _, s in v3_spans(v3_snake)} == {main}
    assert set(api.json("/api/v3/services")["services"]) == {FRONTEND, PROXY, CART}
    v3_ops = api.json("/api/v3/operations", {"service": FRONTEND, "span_kind": "server"})
    assert [(o["name"], o["spanKind"]) for o in v3_ops["operations"]] == [
        ("GET /checkout", "server")
    ]
    api.get("/api/v3/traces/" + "ab" * 16, expect=404)
    assert api.get("/api/traces/" + "ab" * 16, expect=404).json()["data"] is None

    by_service = api.sql_rows(
        "SELECT service_name, count(*) AS n FROM spans GROUP BY service_name ORDER BY service_name"
    )
    assert [[r[0], int(r[1])] for r in by_service] == [[CART, 2], [FRONTEND, 2], [PROXY, 1]]
    total = api.sql_rows("SELECT count(*) AS n FROM spans")
    assert int(total[0][0]) == 5

    return {"trace": normalized, "ops": ops, "found": {k: sorted(trace_ids(v)) for k, v in found.items()}}


@pytest.mark.parametrize(
    "protocol,gzip",
    [("grpc", False), ("grpc", True), ("http", False), ("http", True)],
    ids=["grpc", "grpc-gzip", "http-protobuf", "http-protobuf-gzip"],
)
def test_sdk_export_and_read_back(server, protocol, gzip):
    main, linked, spans = emit_spans(server, protocol, gzip)

    before = eventually(
        lambda: snapshot(server, main, linked, spans), timeout=10, what="spans to be queryable"
    )
    metrics = server.api.metrics_text()
    assert metric_value(metrics, "meshtrace_spans_accepted_total") == 5
    assert metric_value(metrics, "meshtrace_spans_received_total") == 5

    wait_for_flush(server)
    after_flush = snapshot(server, main, linked, spans)
    assert after_flush == before

    server.restart()
    after_restart = snapshot(server, main, linked, spans)
    assert after_restart == before
