"""The Jaeger query API as the Jaeger UI calls it: 64-bit trace IDs printed with 16 hex
characters and found in either form, lookbacks in days and weeks (bookmarked searches carry
them), and the "Trace JSON" view's `prettyPrint=true`."""

import json

import requests

from mtlib import eventually, new_span_id, now_ns, post_otlp_json, request_json, span_json

SHORT_ID = new_span_id().hex()  # 8 random bytes: a 64-bit trace ID
PADDED_ID = SHORT_ID.rjust(32, "0")


def send_64_bit_trace(server) -> None:
    start = now_ns() - 30 * 60 * 1_000_000_000  # half an hour ago
    spans = [span_json(PADDED_ID, "GET /short", start, start + 3_000_000)]
    assert post_otlp_json(server, request_json("short-id-svc", spans)).status_code == 200
    eventually(lambda: server.api.trace(SHORT_ID), what="the 64-bit trace")


def test_64_bit_ids_print_short_and_are_found_in_either_form(server):
    send_64_bit_trace(server)
    for asked in (SHORT_ID, PADDED_ID):
        trace = server.api.trace(asked)
        assert trace["traceID"] == SHORT_ID
        assert all(s["traceID"] == SHORT_ID for s in trace["spans"])
    found = server.api.json("/api/traces", params=[("traceID", SHORT_ID), ("traceID", PADDED_ID)])
    assert [t["traceID"] for t in found["data"]] == [SHORT_ID]
    classes = server.api.json("/api/v1/traces/classes", params={"traceID": SHORT_ID})
    assert list(classes["classes"]) == [SHORT_ID], "the dashboard looks classes up by this ID"


def test_lookback_in_days_and_weeks(server):
    send_64_bit_trace(server)
    for lookback in ("2d", "1w", "1d12h"):
        found = server.api.find_traces(service="short-id-svc", lookback=lookback, limit=20)
        assert [t["traceID"] for t in found] == [SHORT_ID], lookback
    r = server.api.get("/api/traces", params={"service": "short-id-svc", "lookback": "2y"}, expect=None)
    assert r.status_code == 400
    assert "lookback" in r.json()["errors"][0]["msg"]


def test_pretty_print_is_the_same_json_indented(server):
    send_64_bit_trace(server)
    plain = requests.get(f"{server.query_url}/api/traces/{SHORT_ID}", timeout=10)
    pretty = requests.get(f"{server.query_url}/api/traces/{SHORT_ID}?prettyPrint=true", timeout=10)
    assert pretty.status_code == 200
    assert pretty.headers["content-type"].startswith("application/json")
    assert "\n  " in pretty.text and "\n" not in plain.text
    assert json.loads(pretty.text) == plain.json()
