"""Zipkin v2 JSON fixtures posted to :9411/api/v2/spans and read back as Jaeger traces: the
span IDs and local services must match tests/fixtures/README.md's table."""

from __future__ import annotations

import json

import pytest
import requests

from mtlib import FIXTURES, eventually, span_service

# file -> (trace id as read back, distinct span IDs as stored, local services), from
# tests/fixtures/README.md
CASES = {
    "yelp": (
        "a03ee8fff1dcd9b9",
        13,
        {"mobile_api", "routing", "spectre", "unknown", "yelp-main", "yelp_main/api_proxy"},
    ),
    "skew": ("1e223ff1f80f1c69", 3, {"servicea", "serviceb"}),
    "messaging-kafka": ("0562809467078eab", 28, {"servicea", "serviceb"}),
    "smartthings-oauth-authorization": (
        "8ce82b2e9ed820ba",
        130,
        {"account", "auth", "bouncer", "datamgmt", "dove", "paperboy", "pusher", "stlogin"},
    ),
}


def post_fixture(server, name: str) -> None:
    """Posts tests/fixtures/zipkin/<name>.json to the Zipkin endpoint."""
    r = requests.post(
        f"{server.zipkin_url}/api/v2/spans",
        data=(FIXTURES / "zipkin" / f"{name}.json").read_bytes(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 202, r.text


@pytest.fixture
def zipkin_server(server_factory):
    # The fixtures are years old: keep them past the default 7-day retention.
    return server_factory("--retention", "5000d")


@pytest.mark.parametrize("name", sorted(CASES))
def test_zipkin_fixture_round_trip(zipkin_server, name):
    short_id, span_ids, services = CASES[name]
    post_fixture(zipkin_server, name)

    # A 64-bit ID is found by its padded form and printed with 16 characters, as Jaeger does.
    trace_id = short_id.rjust(32, "0")
    trace = eventually(lambda: zipkin_server.api.trace(trace_id), what=f"trace {trace_id}")
    assert trace["traceID"] == short_id
    assert all(s["traceID"] == short_id for s in trace["spans"])
    # Answered adjusted: a shared SERVER half has its own span ID (the Jaeger UI would report
    # "Dupe spanID" otherwise); raw=true answers the IDs as stored.
    assert len({s["spanID"] for s in trace["spans"]}) == len(trace["spans"])
    raw = zipkin_server.api.json(f"/api/traces/{short_id}", params={"raw": "true"})["data"][0]
    assert len({s["spanID"] for s in raw["spans"]}) == span_ids
    assert len(raw["spans"]) == len(trace["spans"])
    assert {span_service(trace, s) for s in trace["spans"]} == services
    # The services list shows the lower-cased local services.
    assert set(zipkin_server.api.services()) == services


def test_zipkin_64bit_trace_id_lookup(zipkin_server):
    """The 64-bit ID a Zipkin user has finds the trace too (Jaeger accepts short IDs)."""
    post_fixture(zipkin_server, "skew")
    trace = eventually(lambda: zipkin_server.api.trace("1e223ff1f80f1c69"), what="short id")
    assert trace["traceID"] == "1e223ff1f80f1c69"


def test_zipkin_all_fixtures_together(zipkin_server):
    for name in CASES:
        post_fixture(zipkin_server, name)
    all_services = set().union(*(c[2] for c in CASES.values()))
    eventually(lambda: set(zipkin_server.api.services()) == all_services, what="services")
    rows = zipkin_server.api.sql_rows(
        "SELECT count(*) AS n, count(DISTINCT service_name) AS s FROM spans"
    )
    records = sum(len(json.loads((FIXTURES / "zipkin" / f"{n}.json").read_text())) for n in CASES)
    assert [int(v) for v in rows[0]] == [records, len(all_services)]


def test_clock_skew_is_adjusted_with_a_warning(zipkin_server):
    """skew.json: the server half starts 65 ms before its client; answered adjusted, the trace
    is as long as its root (99.411 ms), and the shifted spans say by how much."""
    post_fixture(zipkin_server, "skew")

    def extent_us(trace) -> int:
        start = min(s["startTime"] for s in trace["spans"])
        return max(s["startTime"] + s["duration"] for s in trace["spans"]) - start

    trace = eventually(lambda: zipkin_server.api.trace("1e223ff1f80f1c69"), what="skew trace")
    root = next(s for s in trace["spans"] if not s["references"])
    assert root["duration"] == 99_411
    assert extent_us(trace) == 99_411
    warned = [s for s in trace["spans"] if s.get("warnings")]
    assert {span_service(trace, s) for s in warned} == {"serviceb"}
    assert all(
        s["warnings"] == ["This span's timestamps were adjusted by 65.922ms"] for s in warned
    )
    raw = zipkin_server.api.json("/api/traces/1e223ff1f80f1c69", params={"raw": "true"})["data"][0]
    assert extent_us(raw) == 161_718
    assert not any(s.get("warnings") for s in raw["spans"])
