"""Tenants (issue 22): `X-Scope-OrgID`, or the tenant a token binds, keeps everything apart.

Two tenants send through the real OpenTelemetry SDK (OTLP HTTP and OTLP gRPC, the header in
the exporter's `headers` option) beside the default tenant; every read API answers each
tenant with its own data only, objectives set for one are not another's, acknowledged spans
of a tenant survive `kill -9`, and tenants past the configured number are refused.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from mtlib import Api, eventually, export_one_span, new_trace_id, now_ns, post_otlp_json, request_json, span_json

ACME, GLOBEX = "acme", "globex"


def tenant_api(server, tenant: str | None, token: str | None = None) -> Api:
    api = Api(server.query_url)
    if tenant:
        api.session.headers["X-Scope-OrgID"] = tenant
    if token:
        api.session.headers["Authorization"] = f"Bearer {token}"
    return api


def found(api: Api, service: str) -> set[str]:
    body = api.json("/api/traces", {"service": service, "lookback": "1h", "limit": 20})
    return {t["traceID"] for t in body["data"] or []}


def test_each_tenant_sees_only_its_own_spans(server_factory):
    server = server_factory("--max-tenants", "2")
    sent = {}
    acme = HttpExporter(endpoint=server.traces_url, headers={"X-Scope-OrgID": ACME}, timeout=10)
    result, sent[ACME] = export_one_span(acme, "acme-frontend", "GET /cart")
    assert result == SpanExportResult.SUCCESS
    globex = GrpcExporter(
        endpoint=f"http://{server.grpc_target}",
        insecure=True,
        headers=(("x-scope-orgid", GLOBEX),),
        timeout=10,
    )
    result, sent[GLOBEX] = export_one_span(globex, "globex-frontend", "GET /orders")
    assert result == SpanExportResult.SUCCESS
    plain = HttpExporter(endpoint=server.traces_url, timeout=10)
    result, sent["single"] = export_one_span(plain, "plain-frontend", "GET /")
    assert result == SpanExportResult.SUCCESS
    # Zipkin v2 JSON, the third receiver, for globex too.
    zipkin_trace = new_trace_id().hex()[:16]
    zipkin_span = {
        "traceId": zipkin_trace, "id": zipkin_trace, "name": "get /zipkin", "kind": "SERVER",
        "timestamp": now_ns() // 1000, "duration": 1500,
        "localEndpoint": {"serviceName": "globex-frontend"},
    }  # fmt: skip
    r = requests.post(
        f"{server.zipkin_url}/api/v2/spans",
        json=[zipkin_span],
        headers={"X-Scope-OrgID": GLOBEX},
        timeout=10,
    )
    assert r.status_code == 202, r.text

    apis = {ACME: tenant_api(server, ACME), GLOBEX: tenant_api(server, GLOBEX)}
    apis["single"] = tenant_api(server, None)
    services = {ACME: "acme-frontend", GLOBEX: "globex-frontend", "single": "plain-frontend"}
    eventually(
        lambda: found(apis[GLOBEX], "globex-frontend") == {sent[GLOBEX], zipkin_trace},
        timeout=15,
        what="globex's OTLP and Zipkin traces",
    )
    assert zipkin_trace not in found(apis["single"], "globex-frontend")
    for tenant, api in apis.items():
        eventually(
            lambda: found(api, services[tenant]) >= {sent[tenant]},
            timeout=15,
            what=f"{tenant}'s trace in its search",
        )
        assert api.services() == [services[tenant]], tenant
        rows = api.sql_rows("SELECT service_name, count(*) FROM spans GROUP BY service_name")
        want = 2 if tenant == GLOBEX else 1  # globex's Zipkin span too
        assert rows == [[services[tenant], want]], (tenant, rows)
        for other, service in services.items():
            if other != tenant:
                assert found(api, service) == set(), f"{tenant} found {other}'s trace"
                api.get(f"/api/traces/{sent[other]}", expect=404)
                api.get(f"/api/v3/traces/{sent[other]}", expect=404)
        api.get(f"/api/traces/{sent[tenant]}")

    # Objectives, and so budgets and priorities, are a tenant's own.
    objective = {"quantile": 0.99, "latency_ms": 250, "importance": 10}
    r = apis[ACME].session.put(
        f"{server.query_url}/api/v1/classes/checkout/objective", json=objective, timeout=10
    )
    assert r.status_code in (200, 204), r.text
    assert apis[ACME].json("/api/v1/classes/checkout/objective")["objective"]["latency_ms"] == 250
    apis[GLOBEX].get("/api/v1/classes/checkout/objective", expect=404)
    apis["single"].get("/api/v1/classes/checkout/objective", expect=404)

    # A third tenant passes --max-tenants 2; a malformed one is refused, naming the problem.
    trace = new_trace_id().hex()
    body = request_json("initech-frontend", [span_json(trace, "GET /", now_ns(), now_ns() + 1000)])
    r = post_otlp_json(server, body, headers={"X-Scope-OrgID": "initech"})
    assert r.status_code == 429, r.text
    assert "limit of 2 tenants" in r.text
    r = post_otlp_json(server, body, headers={"X-Scope-OrgID": "../etc"})
    assert r.status_code == 400 and "tenant" in r.text, r.text
    r = requests.get(
        f"{server.query_url}/api/services", headers={"X-Scope-OrgID": "a/b"}, timeout=10
    )
    assert r.status_code == 400 and "tenant" in r.text, r.text
    assert (server.data_dir / "tenants" / ACME).is_dir()
    assert not (server.data_dir / "tenants" / "initech").exists()
    # Open paths (health, metrics, the dashboard's files) are the default tenant's: naming a
    # tenant there opens nothing.
    for path in ("/readyz", "/metrics", "/search"):
        r = requests.get(f"{server.query_url}{path}", headers={"X-Scope-OrgID": "drive-by"}, timeout=10)
        assert r.status_code == 200, (path, r.status_code)
    assert not (server.data_dir / "tenants" / "drive-by").exists()

    # Acknowledged spans of a tenant survive kill -9: its log is replayed at the next start.
    late = new_trace_id().hex()
    body = request_json("acme-frontend", [span_json(late, "POST /pay", now_ns(), now_ns() + 1000)])
    r = post_otlp_json(server, body, headers={"X-Scope-OrgID": ACME})
    assert r.status_code == 200, r.text
    server.kill9()
    server.start()
    eventually(
        lambda: found(apis[ACME], "acme-frontend") == {sent[ACME], late},
        timeout=15,
        what="acme's traces after kill -9",
    )
    assert found(apis[GLOBEX], "acme-frontend") == set()
    assert apis[ACME].json("/api/v1/classes/checkout/objective")["objective"]["latency_ms"] == 250


TOKENS = """
[[auth.tokens]]
name = "acme-collector"
token = "acme-ingest-token-0123456789"
scopes = ["ingest"]
tenant = "acme"

[[auth.tokens]]
name = "acme-reader"
token = "acme-read-token-0123456789"
scopes = ["read"]
tenant = "acme"

[[auth.tokens]]
name = "globex-reader"
token = "globex-read-token-0123456789"
scopes = ["read"]
tenant = "globex"
"""


def test_a_token_bound_to_a_tenant_acts_for_it_only(server_factory, tmp_path):
    config = tmp_path / "tenants.toml"
    config.write_text(TOKENS)
    server = server_factory("--config", str(config))
    exporter = HttpExporter(
        endpoint=server.traces_url,
        headers={"Authorization": "Bearer acme-ingest-token-0123456789"},
        timeout=10,
    )
    result, trace = export_one_span(exporter, "acme-frontend", "GET /cart")
    assert result == SpanExportResult.SUCCESS

    acme = tenant_api(server, None, token="acme-read-token-0123456789")
    eventually(lambda: found(acme, "acme-frontend") == {trace}, timeout=15, what="acme's trace")
    globex = tenant_api(server, None, token="globex-read-token-0123456789")
    assert globex.services() == []
    globex.get(f"/api/traces/{trace}", expect=404)
    # Naming another tenant than the token's is refused, and says why.
    sneaky = tenant_api(server, ACME, token="globex-read-token-0123456789")
    r = sneaky.get("/api/services", expect=403)
    assert 'acts for tenant "globex"' in r.json()["error"], r.text
    # The ingest token cannot write into another tenant either.
    trace2 = new_trace_id().hex()
    body = request_json("acme-frontend", [span_json(trace2, "GET /", now_ns(), now_ns() + 1000)])
    r = post_otlp_json(
        server,
        body,
        headers={
            "Authorization": "Bearer acme-ingest-token-0123456789",
            "X-Scope-OrgID": GLOBEX,
        },
    )
    assert r.status_code == 403, r.text
    assert globex.services() == []


def test_tenants_on_a_postgres_catalog_keep_their_own_schema(pg_catalog_url, server_factory):
    import subprocess

    server = server_factory(catalog_url=pg_catalog_url, name="pg")
    sent = {}
    for tenant in (ACME, None):
        trace = new_trace_id().hex()
        body = request_json(f"{tenant or 'plain'}-frontend", [span_json(trace, "GET /", now_ns(), now_ns() + 1000)])
        headers = {"X-Scope-OrgID": tenant} if tenant else {}
        r = post_otlp_json(server, body, headers=headers)
        assert r.status_code == 200, r.text
        sent[tenant] = trace
    acme, plain = tenant_api(server, ACME), tenant_api(server, None)
    eventually(lambda: found(acme, "acme-frontend") == {sent[ACME]}, timeout=15, what="acme's trace")
    eventually(lambda: found(plain, "plain-frontend") == {sent[None]}, timeout=15, what="the default tenant's")
    assert found(plain, "acme-frontend") == set() and found(acme, "plain-frontend") == set()

    def segment_rows(schema: str) -> int:
        out = subprocess.run(
            ["psql", pg_catalog_url, "-Atc", f"SELECT count(*) FROM {schema}.segments"],
            check=True,
            capture_output=True,
            text=True,
        )
        return int(out.stdout.strip())

    # The tenant's catalog is its own schema of the same database; the default one stays public.
    eventually(lambda: segment_rows('"tenant_acme"') >= 1, timeout=15, what="acme's segment rows")
    server.restart()
    assert found(acme, "acme-frontend") == {sent[ACME]}
    assert found(acme, "plain-frontend") == set()


def test_tenants_switched_off_ignore_the_header(server_factory, tmp_path):
    config = tmp_path / "no-tenants.toml"
    config.write_text("[tenants]\nenabled = false\n")
    server = server_factory("--config", str(config))
    trace = new_trace_id().hex()
    body = request_json("acme-frontend", [span_json(trace, "GET /", now_ns(), now_ns() + 1000)])
    r = post_otlp_json(server, body, headers={"X-Scope-OrgID": ACME})
    assert r.status_code == 200, r.text
    plain = tenant_api(server, None)
    eventually(lambda: found(plain, "acme-frontend") == {trace}, timeout=15, what="the trace, untenanted")
    assert found(tenant_api(server, GLOBEX), "acme-frontend") == {trace}
    assert not (server.data_dir / "tenants").exists()


def test_an_idle_tenant_is_closed_and_opened_again_at_its_next_request(server_factory, tmp_path):
    config = tmp_path / "idle.toml"
    config.write_text('[tenants]\nidle_close = "2s"\n')
    server = server_factory("--config", str(config))
    acme = tenant_api(server, ACME)
    trace = new_trace_id().hex()
    body = request_json("acme-frontend", [span_json(trace, "GET /", now_ns(), now_ns() + 1000)])
    r = post_otlp_json(server, body, headers={"X-Scope-OrgID": ACME})
    assert r.status_code == 200, r.text
    eventually(lambda: found(acme, "acme-frontend") == {trace}, timeout=15, what="acme's trace")
    # A proxy long-polling keeps the tenant open (for longer than idle_close here).
    started = time.monotonic()
    poll = requests.get(
        f"{server.query_url}/api/v1/priorities",
        params={"service": "acme-frontend", "version": 0, "wait": "4s"},
        headers={"X-Scope-OrgID": ACME},
        timeout=20,
    )
    poll_ended = datetime.now(timezone.utc)
    assert poll.status_code == 200, poll.text
    assert time.monotonic() - started >= 3.5, "the poll waited for a new version"
    closed = eventually(
        lambda: [l for l in server.log_text().splitlines() if "closed an idle tenant's engine" in l],
        timeout=15,
        what="acme's engine closed after 2 s without requests",
    )
    closed_at = datetime.fromisoformat(closed[0].split()[0].replace("Z", "+00:00"))
    assert closed_at >= poll_ended - timedelta(milliseconds=50), "closed while a proxy polled" 
    # Its spans were flushed to its folder; the next request opens it again and finds them.
    assert list((server.data_dir / "tenants" / ACME / "spans").rglob("*.parquet"))
    assert found(acme, "acme-frontend") == {trace}
    assert server.log_text().count("serving a tenant") == 2
    assert found(tenant_api(server, None), "acme-frontend") == set()
