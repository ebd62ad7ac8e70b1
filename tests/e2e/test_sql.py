"""POST /api/v1/sql: read-only SQL over the `spans` table."""

from __future__ import annotations

import pytest

from mtlib import new_span_id, new_trace_id, now_ns, post_otlp_json, request_json, span_json


@pytest.fixture
def sql_server(server):
    trace = new_trace_id().hex()
    root = new_span_id().hex()
    t = now_ns()
    spans = [
        span_json(
            trace,
            "ingress",
            t,
            t + 3_000_000,
            span_id_hex=root,
            attrs={"http.status_code": 503, "upstream_cluster": "outbound|80||b", "tenant": "acme"},
        ),
        span_json(
            trace,
            "egress",
            t + 1000,
            t + 2_000_000,
            parent_hex=root,
            kind=3,
            attrs={"http.status_code": 200, "tenant": "globex"},
        ),
    ]
    r = post_otlp_json(server, request_json("sql-svc", spans))
    assert r.status_code == 200, r.text
    server.sql_trace, server.sql_root = trace, root
    return server


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE spans",
        "INSERT INTO spans (service_name) VALUES ('x')",
        "CREATE TABLE evil AS SELECT * FROM spans",
        "CREATE VIEW evil AS SELECT 1",
        "DELETE FROM spans",
        "SELECT 1; DROP TABLE spans",
    ],
)
def test_non_queries_are_refused(sql_server, statement):
    r = sql_server.api.sql_response(statement)
    assert r.status_code == 400, f"{statement!r} -> {r.status_code}: {r.text}"
    assert r.json().get("error")
    # Nothing changed.
    [[n]] = sql_server.api.sql_rows("SELECT count(*) FROM spans")
    assert int(n) == 2


def test_syntax_error_is_400(sql_server):
    r = sql_server.api.sql_response("SELEC name FROM spans")
    assert r.status_code == 400
    assert r.json().get("error")


def test_select_columns_and_hex_ids(sql_server):
    body = sql_server.api.sql(
        "SELECT name, kind, http_status_code, upstream_cluster, duration_ns, trace_id, span_id, "
        "parent_span_id FROM spans WHERE service_name = 'sql-svc' ORDER BY name"
    )
    assert body["columns"] == [
        "name",
        "kind",
        "http_status_code",
        "upstream_cluster",
        "duration_ns",
        "trace_id",
        "span_id",
        "parent_span_id",
    ]
    assert body["truncated"] is False
    egress, ingress = body["rows"]
    assert egress[:5] == ["egress", "client", 200, None, 1_999_000]
    assert ingress[:5] == ["ingress", "server", 503, "outbound|80||b", 3_000_000]
    assert egress[5] == ingress[5] == sql_server.sql_trace
    assert ingress[6] == sql_server.sql_root
    assert egress[7] == sql_server.sql_root
    assert ingress[7] is None


def test_aggregate(sql_server):
    rows = sql_server.api.sql_rows(
        "SELECT service_name, count(*) AS n, max(duration_ns) AS longest FROM spans "
        "GROUP BY service_name"
    )
    assert [[r[0], int(r[1]), int(r[2])] for r in rows] == [["sql-svc", 2, 3_000_000]]


def test_attribute_map_access(sql_server):
    rows = sql_server.api.sql_rows(
        "SELECT name, attributes['tenant'] AS tenant FROM spans ORDER BY name"
    )
    assert rows == [["egress", "globex"], ["ingress", "acme"]]
