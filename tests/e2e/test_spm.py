"""Jaeger's Service Performance Monitoring API (`/api/metrics/*`, what the Jaeger UI's Monitor
tab reads) against spans with known rates, errors and latencies sent by the real OpenTelemetry
SDK: the values, not only the shape, while the spans are buffered, after the flush to Parquet
and after a restart."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from mtlib import eventually, wait_for_flush

SERVICE = "spm-shop"
MINUTE_NS = 60 * 1_000_000_000
MS_NS = 1_000_000
# The spans: (operation, kind, count, duration ms, errors).
LOAD = [
    ("GET /cart", SpanKind.SERVER, 50, 10, 0),
    ("GET /cart", SpanKind.SERVER, 10, 100, 0),
    ("POST /pay", SpanKind.SERVER, 30, 20, 6),
    ("GET inventory", SpanKind.CLIENT, 40, 5, 0),
]
RATE_PER_MS = 600_000  # each point is computed over 10 minutes


def send_load(server, minute_ns: int) -> None:
    """Every span of LOAD, all starting within the minute that begins at minute_ns."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=server.traces_url)))
    tracer = provider.get_tracer("spm-test")
    offset = 0
    for operation, kind, count, ms, errors in LOAD:
        for i in range(count):
            start = minute_ns + 1_000_000_000 + offset * 100_000_000  # 0.1 s apart
            offset += 1
            span = tracer.start_span(operation, kind=kind, start_time=start)
            if i < errors:
                span.set_status(Status(StatusCode.ERROR, "payment declined"))
            span.end(end_time=start + ms * MS_NS)
    assert offset * 100_000_000 < 58_000_000_000, "the load fits one minute"
    assert provider.force_flush(30_000)
    provider.shutdown()


def metrics(server, which: str, minute_ns: int, **extra) -> dict:
    params = {
        "service": SERVICE,
        "endTs": (minute_ns + 3 * MINUTE_NS) // MS_NS,
        "lookback": 5 * 60_000,
        "step": 60_000,
        "ratePer": RATE_PER_MS,
        **extra,
    }
    return server.api.json(f"/api/metrics/{which}", params=params)


def series(family: dict) -> dict[str, list[tuple[str, float]]]:
    """{operation or service: [(timestamp, value)]}."""
    out = {}
    for m in family["metrics"]:
        labels = {label["name"]: label["value"] for label in m["labels"]}
        assert labels["service_name"] == SERVICE
        key = labels.get("operation", SERVICE)
        out[key] = [(p["timestamp"], p["gaugeValue"]["doubleValue"]) for p in m["metricPoints"]]
    return out


def iso_minute(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def check_values(server, minute_ns: int) -> bool:
    # A point counts the whole minutes that ended by its time: the minute holding the load
    # counts in the 3 points after it; the 3 points up to its start have no calls in their
    # window and are absent, as in Prometheus.
    stamps = [iso_minute(minute_ns + k * MINUTE_NS) for k in range(1, 4)]

    calls = series(metrics(server, "calls", minute_ns))
    assert list(calls) == [SERVICE]
    assert [t for t, _ in calls[SERVICE]] == stamps
    # 90 SERVER spans over a 600 s window: 0.15 calls/s (the 40 CLIENT spans are not counted).
    assert all(v == pytest.approx(90 / 600) for _, v in calls[SERVICE])

    by_op = series(metrics(server, "calls", minute_ns, groupByOperation="true"))
    assert {op: pts[0][1] for op, pts in by_op.items()} == pytest.approx(
        {"GET /cart": 60 / 600, "POST /pay": 30 / 600}
    )
    client = series(metrics(server, "calls", minute_ns, spanKind="client"))
    assert client[SERVICE][0][1] == pytest.approx(40 / 600)

    errors = series(metrics(server, "errors", minute_ns, groupByOperation="true"))
    assert {op: pts[0][1] for op, pts in errors.items()} == pytest.approx(
        {"GET /cart": 0.0, "POST /pay": 6 / 30}
    )
    total_errors = series(metrics(server, "errors", minute_ns))
    assert total_errors[SERVICE][0][1] == pytest.approx(6 / 90)

    # Latencies in ms, within the sketch's 1% relative error.
    def latency(q: float, **extra) -> dict[str, float]:
        s = series(metrics(server, "latencies", minute_ns, quantile=q, **extra))
        return {k: pts[0][1] for k, pts in s.items()}

    assert latency(0.5, groupByOperation="true") == pytest.approx(
        {"GET /cart": 10.0, "POST /pay": 20.0}, rel=0.01
    )
    # GET /cart: 50 of 60 calls take 10 ms, 10 take 100 ms; the p95 is a 100 ms call.
    assert latency(0.95, groupByOperation="true")["GET /cart"] == pytest.approx(100.0, rel=0.01)
    # The service over both operations: 90 calls, 50 at 10 ms, 30 at 20 ms, 10 at 100 ms.
    assert latency(0.5)[SERVICE] == pytest.approx(10.0, rel=0.01)
    assert latency(0.99)[SERVICE] == pytest.approx(100.0, rel=0.01)
    return True


def test_red_metrics_from_sdk_spans(server):
    # A whole past minute, so every span lands in one rollup minute.
    minute_ns = (time.time_ns() // MINUTE_NS - 2) * MINUTE_NS
    send_load(server, minute_ns)
    eventually(lambda: check_values(server, minute_ns), timeout=20, what="RED metrics (buffered)")
    wait_for_flush(server)
    assert check_values(server, minute_ns), "after the flush to Parquet"
    server.restart()
    assert check_values(server, minute_ns), "after a restart"


def test_minstep_and_bad_parameters(server):
    assert server.api.json("/api/metrics/minstep")["data"] == 60_000
    cases = [
        ("calls", {}, "service"),
        ("latencies", {"service": SERVICE}, "quantile"),
        ("latencies", {"service": SERVICE, "quantile": "1.5"}, "quantile"),
        ("calls", {"service": SERVICE, "spanKind": "sideways"}, "span kind"),
        ("calls", {"service": SERVICE, "lookback": "soon"}, "lookback"),
        ("errors", {"service": SERVICE, "step": 0}, "positive"),
    ]
    for which, params, needle in cases:
        r = server.api.get(f"/api/metrics/{which}", params=params, expect=400)
        msg = r.json()["errors"][0]["msg"]
        assert needle in msg, (which, params, msg)
    # A lookback of 30 years at the smallest step is answered with at most 11,000 points.
    long = server.api.json(
        "/api/metrics/calls", params={"service": SERVICE, "lookback": 30 * 365 * 86_400_000}
    )
    assert long["metrics"] == []
    # A service without spans has no series (Jaeger answers the same).
    empty = server.api.json("/api/metrics/calls", params={"service": "nobody"})
    assert empty["name"] == "service_call_rate" and empty["metrics"] == []


def test_a_steady_rate_is_answered_exactly(server):
    """30 calls a minute for 5 whole minutes is 0.5 calls/s at every point, whatever the
    window and wherever the points fall within a minute."""
    provider = TracerProvider(resource=Resource.create({"service.name": "spm-steady"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=server.traces_url)))
    tracer = provider.get_tracer("spm-test")
    now_minute = time.time_ns() // MINUTE_NS * MINUTE_NS
    for k in range(5 * 30):
        start = now_minute - 5 * MINUTE_NS + k * 2_000_000_000  # every 2 s
        tracer.start_span("GET /", kind=SpanKind.SERVER, start_time=start).end(
            end_time=start + 5 * MS_NS
        )
    assert provider.force_flush(30_000)
    provider.shutdown()

    for rate_per_ms in (60_000, 180_000, 240_000):
        params = {
            "service": "spm-steady",
            "endTs": (now_minute + 30_000_000_000) // MS_NS,  # half a minute past a minute
            "lookback": 60_000,
            "step": 60_000,
            "ratePer": rate_per_ms,
        }

        def rates() -> list[float]:
            family = server.api.json("/api/metrics/calls", params=params)
            points = family["metrics"][0]["metricPoints"]
            return [p["gaugeValue"]["doubleValue"] for p in points]

        got = eventually(rates, what=f"call rates over {rate_per_ms} ms")
        assert got == pytest.approx([0.5, 0.5]), rate_per_ms
