"""Who may change the mesh (issue 22): bearer tokens with scopes on every port, loopback-only
changes without tokens, JSON-only bodies and a Host allow-list against browsers.

The OpenTelemetry SDK sends with its `headers` option carrying the token, as a user sets it.
"""

from __future__ import annotations

import socket

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExportResult

from mtlib import (
    eventually,
    export_one_span,
    metric_value,
    new_span_id,
    new_trace_id,
    now_ns,
    request_json,
    span_json,
)

INGEST = "ingest-token-4f9c2a7d1e"
READER = "reader-token-8b3e6f0a2c"
ADMIN = "admin-token-1d7a9c4e6b"
REVIEWS = "reviews-proxy-token-5e2b"

TOKENS = f"""
[[auth.tokens]]
name = "collector"
token = "{INGEST}"
scopes = ["ingest"]

[[auth.tokens]]
name = "grafana"
token = "{READER}"
scopes = ["read"]

[[auth.tokens]]
name = "ops"
token = "{ADMIN}"
scopes = ["admin"]
"""

# Loaded with --auth-tokens-file, as a mounted secret would be.
PROXY_FILE = f"""
[[tokens]]
name = "reviews-sidecar"
token = "{REVIEWS}"
scopes = ["proxy"]
services = ["reviews"]
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(server_factory, tmp_path):
    config = tmp_path / "meshtrace.toml"
    config.write_text(TOKENS)
    proxies = tmp_path / "tokens.toml"
    proxies.write_text(PROXY_FILE)
    return server_factory("--config", str(config), "--auth-tokens-file", str(proxies))


def export_with_sdk(server, protocol: str, token: str | None) -> tuple[SpanExportResult, str]:
    headers = bearer(token) if token else {}
    if protocol == "grpc":
        exporter = GrpcExporter(
            endpoint=f"http://{server.grpc_target}",
            insecure=True,
            timeout=5,
            headers={k.lower(): v for k, v in headers.items()},
        )
    else:
        exporter = HttpExporter(endpoint=server.traces_url, timeout=5, headers=headers)
    return export_one_span(exporter, f"sdk-{protocol}", "GET /secure")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_sdk_exports_with_its_token_and_nothing_without(secured, protocol):
    result, trace_id = export_with_sdk(secured, protocol, INGEST)
    assert result == SpanExportResult.SUCCESS
    refused, refused_id = export_with_sdk(secured, protocol, None)
    assert refused == SpanExportResult.FAILURE
    wrong, wrong_id = export_with_sdk(secured, protocol, READER)
    assert wrong == SpanExportResult.FAILURE
    url = f"{secured.query_url}/api/traces/{trace_id}"
    found = eventually(
        lambda: requests.get(url, headers=bearer(READER), timeout=5).status_code == 200 or None,
        what="the exported trace",
    )
    assert found
    for other in (refused_id, wrong_id):
        r = requests.get(f"{secured.query_url}/api/traces/{other}", headers=bearer(READER), timeout=5)
        assert r.status_code == 404, "a refused export stored spans"


def test_grpc_says_unauthenticated_and_permission_denied(secured):
    channel = grpc.insecure_channel(secured.grpc_target)
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    request = trace_service_pb2.ExportTraceServiceRequest()
    with pytest.raises(grpc.RpcError) as missing:
        stub.Export(request, timeout=5)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in missing.value.details()
    with pytest.raises(grpc.RpcError) as lacking:
        stub.Export(request, timeout=5, metadata=[("authorization", f"Bearer {READER}")])
    assert lacking.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ingest" in lacking.value.details()
    stub.Export(request, timeout=5, metadata=[("authorization", f"Bearer {INGEST}")])


def test_every_http_port_wants_the_right_scope(secured):
    q = secured.query_url
    trace = new_trace_id().hex()
    body = request_json("scoped", [span_json(trace, "op", now_ns(), now_ns() + 1000)])
    r = requests.post(secured.traces_url, json=body, timeout=5)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "bearer token" in r.json()["error"]
    zipkin = [{"traceId": trace, "id": trace[:16], "name": "z", "timestamp": 1, "localEndpoint": {"serviceName": "z"}}]
    r = requests.post(f"{secured.zipkin_url}/api/v2/spans", json=zipkin, timeout=5)
    assert r.status_code == 401
    r = requests.post(f"{secured.zipkin_url}/api/v2/spans", json=zipkin, headers=bearer(INGEST), timeout=5)
    assert r.status_code == 202, r.text
    # The query port: open health, metrics and dashboard files; the API wants `read`.
    assert requests.get(f"{q}/readyz", timeout=5).status_code == 200
    assert requests.get(f"{q}/metrics", timeout=5).status_code == 200
    assert requests.get(f"{q}/", timeout=5).status_code == 200
    assert requests.get(f"{q}/api/services", timeout=5).status_code == 401
    r = requests.get(f"{q}/api/services", headers=bearer(INGEST), timeout=5)
    assert r.status_code == 403 and "lacks scope read or admin" in r.json()["error"], r.text
    assert requests.get(f"{q}/api/services", headers=bearer(READER), timeout=5).status_code == 200
    r = requests.post(f"{q}/api/v1/sql", json={"sql": "SELECT count(*) FROM spans"}, headers=bearer(READER), timeout=5)
    assert r.status_code == 200, r.text
    # Changing the mesh wants `admin`.
    override = {"batch": 0}
    r = requests.put(f"{q}/api/v1/priorities/overrides", json=override, headers=bearer(READER), timeout=5)
    assert r.status_code == 403 and "admin" in r.json()["error"], r.text
    r = requests.put(f"{q}/api/v1/priorities/overrides", json=override, headers=bearer(ADMIN), timeout=5)
    assert r.status_code == 200, r.text
    got = requests.get(f"{q}/api/v1/priorities/overrides", headers=bearer(READER), timeout=5).json()
    assert got == override


def test_a_proxy_token_reads_only_its_own_service(secured):
    q = f"{secured.query_url}/api/v1/priorities"
    mine = requests.get(q, params={"service": "reviews", "node": "reviews-v1-abc"}, headers=bearer(REVIEWS), timeout=5)
    assert mine.status_code == 200, mine.text
    other = requests.get(q, params={"service": "ratings"}, headers=bearer(REVIEWS), timeout=5)
    assert other.status_code == 403 and "reviews-sidecar" in other.json()["error"]
    r = requests.get(f"{secured.query_url}/api/traces", params={"service": "x"}, headers=bearer(REVIEWS), timeout=5)
    assert r.status_code == 403, "a proxy token reads traces"
    proxies = requests.get(f"{secured.query_url}/api/v1/proxies", headers=bearer(READER), timeout=5).json()
    assert [p["service"] for p in proxies["proxies"]] == ["reviews"]


def test_bodies_must_be_json_and_hosts_must_be_ours(server):
    q = server.query_url
    for method, path, body in [
        ("PUT", "/api/v1/priorities/overrides", '{"batch": 0}'),
        ("POST", "/api/v1/sql", '{"sql": "SELECT 1"}'),
        ("PUT", "/api/v1/classes", "[]"),
    ]:
        r = requests.request(method, q + path, data=body, headers={"Content-Type": "text/plain"}, timeout=5)
        assert r.status_code == 415, f"{method} {path}: {r.status_code} {r.text}"
        assert "application/json" in r.json()["error"]
    assert requests.get(f"{q}/api/v1/priorities/overrides", timeout=5).json() == {}
    # DNS rebinding: the page's origin resolves to us, but its Host header names it.
    r = requests.get(f"{q}/api/services", headers={"Host": "attacker.example:16686"}, timeout=5)
    assert r.status_code == 421 and "allowed_hosts" in r.json()["error"]
    r = requests.get(f"{q}/api/services", headers={"Host": f"localhost:{server.http_port}"}, timeout=5)
    assert r.status_code == 200
    # Zipkin without a JSON content type (a "simple" cross-origin request) is refused.
    r = requests.post(f"{server.zipkin_url}/api/v2/spans", data="[]", timeout=5)
    assert r.status_code == 415, r.text
    # No CORS unless configured.
    r = requests.options(f"{q}/api/v1/sql", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}, timeout=5)
    assert "Access-Control-Allow-Origin" not in r.headers


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_without_tokens_changes_and_sql_are_for_loopback_only(server_factory):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    server = server_factory(http_host="0.0.0.0")
    remote = f"http://{address}:{server.http_port}"
    host = {"Host": f"localhost:{server.http_port}"}
    assert requests.get(f"{remote}/api/services", headers=host, timeout=5).status_code == 200
    r = requests.put(f"{remote}/api/v1/priorities/overrides", json={"batch": 0}, headers=host, timeout=5)
    assert r.status_code == 403 and "loopback" in r.json()["error"], r.text
    r = requests.post(f"{remote}/api/v1/sql", json={"sql": "SELECT 1"}, headers=host, timeout=5)
    assert r.status_code == 403
    r = requests.put(f"{server.query_url}/api/v1/priorities/overrides", json={"batch": 0}, timeout=5)
    assert r.status_code == 200
    assert "no auth tokens configured" in server.log_text()


SHOP = "shop-ingest-token-7c1f9e"


def test_an_ingest_token_speaks_only_for_its_services_and_classes(server_factory, tmp_path):
    config = tmp_path / "meshtrace.toml"
    config.write_text(
        TOKENS
        + f"""
[[auth.tokens]]
name = "shop"
token = "{SHOP}"
scopes = ["ingest"]
services = ["productpage", "reviews"]
classes = ["batch"]
"""
    )
    server = server_factory("--config", str(config))
    t = now_ns()
    forged, honest, foreign = (new_trace_id().hex() for _ in range(3))
    body = {
        "resourceSpans": [
            request_json(
                "productpage",
                [
                    span_json(forged, "GET /", t, t + 5_000_000_000, attrs={"mesh.class": "interactive"}),
                    span_json(honest, "GET /", t, t + 1000, attrs={"baggage": "mesh.class=batch"}),
                ],
            )["resourceSpans"][0],
            request_json("payments", [span_json(foreign, "charge", t, t + 1000)])["resourceSpans"][0],
        ]
    }
    r = requests.post(server.traces_url, json=body, headers=bearer(SHOP), timeout=5)
    assert r.status_code == 200, r.text
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert 'token "shop" may not send spans of service "payments"' in partial["errorMessage"]
    classes = requests.get(
        f"{server.query_url}/api/v1/traces/classes",
        params={"traceID": [forged, honest]},
        headers=bearer(READER),
        timeout=5,
    ).json()
    by_id = {trace_id: c["class"] for trace_id, c in classes["classes"].items()}
    assert by_id[forged] == "default", f"a forged class claim was kept: {classes}"
    assert by_id[honest] == "batch"
    stripped = [
        line for line in requests.get(f"{server.query_url}/metrics", timeout=5).text.splitlines()
        if line.startswith("meshtrace_class_claims_stripped_total ")
    ]
    assert stripped == ["meshtrace_class_claims_stripped_total 1"], stripped


GATEWAYS = [f"gateway-{i}-token-{i}a8e3f" for i in range(4)]
MALLORY = "stolen-gateway-token-9d4b1c"


def budgets_config(share: float) -> str:
    tokens = "".join(
        f'\n[[auth.tokens]]\nname = "gateway-{i}"\ntoken = "{t}"\nscopes = ["ingest"]\n'
        for i, t in enumerate(GATEWAYS)
    )
    return (
        TOKENS
        + tokens
        + f'\n[[auth.tokens]]\nname = "mallory"\ntoken = "{MALLORY}"\nscopes = ["ingest"]\n'
        + f"""
[provenance]
idle = "500ms"

[budgets]
max_sender_share = {share}

[budgets.objectives.batch]
quantile = 0.5
latency_ms = 1000
importance = 1
"""
    )


def send_batch_traces(server, token: str, n: int, reviews_ms: int) -> None:
    """`n` traces of class batch: productpage (1 ms of its own) calling reviews."""
    t = now_ns()
    spans_pp, spans_rv = [], []
    for _ in range(n):
        trace, root = new_trace_id().hex(), new_span_id().hex()
        end = t + (reviews_ms + 1) * 1_000_000
        spans_pp.append(span_json(trace, "GET /", t, end, span_id_hex=root, attrs={"mesh.class": "batch"}))
        spans_rv.append(span_json(trace, "GET /reviews", t + 500_000, end - 500_000, parent_hex=root))
    body = {
        "resourceSpans": [
            request_json("productpage", spans_pp)["resourceSpans"][0],
            request_json("reviews", spans_rv)["resourceSpans"][0],
        ]
    }
    r = requests.post(server.traces_url, json=body, headers=bearer(token), timeout=10)
    assert r.status_code == 200 and "partialSuccess" not in r.json(), r.text


def reviews_budget(server) -> tuple[int, float]:
    """The batch class's traces in the window and its observed median self time at reviews."""
    budgets = requests.get(f"{server.query_url}/api/v1/budgets", headers=bearer(READER), timeout=5)
    assert budgets.status_code == 200, budgets.text
    (batch,) = [c for c in budgets.json()["classes"] if c["class"] == "batch"]
    (reviews,) = [h for h in batch["hops"] if h["service"] == "reviews"]
    return batch["samples"], reviews["observed_ms"]


@pytest.mark.parametrize("share", [0.25, 1.0])
def test_one_sender_cannot_outweigh_the_others_in_a_budget(server_factory, tmp_path, share):
    """Four gateways send `batch` traces whose reviews hop takes 10 ms; a stolen token that may
    send the class too floods five times as many, with reviews at 400 ms. Under
    `max_sender_share = 0.25` the flood holds a quarter of the samples and the median budget
    observation at reviews stays the honest 10 ms; with no bound (1.0, the control) it is the
    flood's 400 ms. Every span is stored either way: the bound is on budgets only."""
    config = tmp_path / "meshtrace.toml"
    config.write_text(budgets_config(share))
    server = server_factory("--config", str(config))
    for _ in range(6):
        for token in GATEWAYS:
            send_batch_traces(server, token, 5, reviews_ms=10)
        send_batch_traces(server, MALLORY, 100, reviews_ms=400)
    sent = 6 * (4 * 5 + 100)

    def all_completed():
        text = requests.get(f"{server.query_url}/metrics", timeout=5).text
        assert metric_value(text, "meshtrace_provenance_completed_traces_total") >= sent
        return text

    text = eventually(all_completed, timeout=30, what="every trace completed")
    samples, observed_ms = reviews_budget(server)
    capped = metric_value(text, "meshtrace_budget_capped_samples_total")
    if share < 1:
        # 120 honest traces, and the flood's at most a quarter of the whole: about 40, fewer
        # when its traces complete in a step before the honest ones (149 seen in CI).
        assert 125 <= samples <= 170, samples
        assert observed_ms == pytest.approx(10, rel=0.05), observed_ms
        assert capped > 3 * 500, capped  # end to end, at productpage and at reviews
    else:
        assert samples == sent
        assert observed_ms == pytest.approx(400, rel=0.05), observed_ms
        assert capped == 0

    def stored():
        r = requests.post(
            f"{server.query_url}/api/v1/sql",
            json={"sql": "SELECT count(*) FROM spans WHERE service_name = 'reviews'"},
            headers=bearer(ADMIN),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert int(r.json()["rows"][0][0]) == sent, r.text
        return True

    eventually(stored, timeout=15, what="every reviews span stored")
