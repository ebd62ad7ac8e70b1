"""Port of Jaeger's storage integration suite (testFindTraces, GetServices, GetOperations)
against meshtrace's Jaeger HTTP API, with the fixtures of tests/fixtures/jaeger-storage-suite.

All 32 fixtures are written over OTLP HTTP JSON before any query, with dates shifted as
SOURCES.md describes: 2017-01-25 -> two days ago, any other date -> yesterday (time of day
kept), in both the fixtures and the queries.
"""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from mtlib import FIXTURES, Server, find_binary, micros, post_otlp_json

SUITE = FIXTURES / "jaeger-storage-suite"
TODAY = dt.datetime.now(dt.timezone.utc).date()
YESTERDAY = TODAY - dt.timedelta(days=1)
TWO_DAYS_AGO = TODAY - dt.timedelta(days=2)
FIXTURE_NAMES = sorted(p.stem for p in (SUITE / "traces").glob("*.json"))
QUERIES = json.loads((SUITE / "queries.json").read_text())


def shift_ns(value: str) -> str:
    """Moves a unix-ns timestamp to yesterday (or two days ago if on 2017-01-25), keeping the
    time of day."""
    ns = int(value)
    secs, rem = divmod(ns, 1_000_000_000)
    t = dt.datetime.fromtimestamp(secs, dt.timezone.utc)
    day = TWO_DAYS_AGO if t.date() == dt.date(2017, 1, 25) else YESTERDAY
    moved = dt.datetime.combine(day, t.time(), tzinfo=dt.timezone.utc)
    return str(int(moved.timestamp()) * 1_000_000_000 + rem)


def shifted_fixture(name: str) -> dict:
    data = copy.deepcopy(json.loads((SUITE / "traces" / f"{name}.json").read_text()))
    for rs in data["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("startTimeUnixNano", "endTimeUnixNano"):
                    span[key] = shift_ns(span[key])
                for event in span.get("events") or []:
                    if "timeUnixNano" in event:
                        event["timeUnixNano"] = shift_ns(event["timeUnixNano"])
    return data


def fixture_traces(name: str) -> dict[str, int]:
    """trace ID -> span count of one fixture."""
    out: dict[str, int] = {}
    data = json.loads((SUITE / "traces" / f"{name}.json").read_text())
    for rs in data["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                out[span["traceId"].lower()] = out.get(span["traceId"].lower(), 0) + 1
    return out


def fixture_services(name: str) -> set[str]:
    data = json.loads((SUITE / "traces" / f"{name}.json").read_text())
    out = set()
    for rs in data["resourceSpans"]:
        for kv in rs["resource"].get("attributes") or []:
            if kv["key"] == "service.name":
                out.add(kv["value"]["stringValue"])
    return out


def shift_query_time(text: str) -> dt.datetime:
    text = text.replace("2017-01-26", YESTERDAY.isoformat()).replace(
        "2017-01-25", TWO_DAYS_AGO.isoformat()
    )
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def tag_string(v) -> str:
    """A query tag value as the Jaeger UI sends it (a string; Go's formatting of the value)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def jaeger_params(query: dict) -> dict:
    params = {
        "service": query["ServiceName"],
        "start": micros(shift_query_time(query["StartTimeMin"])),
        "end": micros(shift_query_time(query["StartTimeMax"])),
        "limit": query["NumTraces"],
    }
    if query["OperationName"]:
        params["operation"] = query["OperationName"]
    if query["Tags"]:
        params["tags"] = json.dumps({k: tag_string(v) for k, v in query["Tags"].items()})
    if query["DurationMin"]:
        params["minDuration"] = f"{query['DurationMin']}ns"
    if query["DurationMax"]:
        params["maxDuration"] = f"{query['DurationMax']}ns"
    return params


@pytest.fixture(scope="module")
def loaded(request, tmp_path_factory) -> Server:
    binary = find_binary()
    if not binary.is_file():
        pytest.fail(f"meshtrace binary not found at {binary}", pytrace=False)
    server = Server(binary, tmp_path_factory.mktemp("storage-suite"), name="storage-suite")
    request.module._meshtrace_servers = [server]
    server.start()
    for name in FIXTURE_NAMES:
        r = post_otlp_json(server, shifted_fixture(name))
        assert r.status_code == 200, f"{name}: {r.status_code} {r.text}"
        assert not r.json().get("partialSuccess"), f"{name}: {r.text}"
    yield server
    server.close()


def test_fixture_count():
    assert len(FIXTURE_NAMES) == 32
    assert len(QUERIES) == 25


@pytest.mark.parametrize("case", QUERIES, ids=[q["Caption"] for q in QUERIES])
def test_find_traces(loaded, case):
    expected: dict[str, int] = {}
    for name in case["ExpectedFixtures"]:
        expected.update(fixture_traces(name))
    params = jaeger_params(case["Query"])
    got = loaded.api.find_traces(**params)
    got_ids = {t["traceID"].lower().rjust(32, "0") for t in got}
    assert got_ids == set(expected), f"query {params}"
    # Whole traces come back, including spans outside the query window (multi_index_trace).
    for t in got:
        assert len(t["spans"]) == expected[t["traceID"].lower().rjust(32, "0")], t["traceID"]


def counter_queries(query: dict) -> dict[str, dict]:
    """Variants of a case that must find nothing: each filter, tightened on its own so that the
    expected traces no longer match (upstream's suite gives most cases a service of their own,
    so without these a server that ignored a filter would still pass)."""
    out: dict[str, dict] = {}
    for key in query["Tags"] or {}:
        q = copy.deepcopy(query)
        value = q["Tags"][key]
        q["Tags"][key] = (not value) if isinstance(value, bool) else f"{value}0"
        out[f"tag {key} differs"] = q
    if query["OperationName"]:
        out["other operation"] = {**query, "OperationName": "no-such-operation"}
    if query["DurationMax"]:
        out["longer than max"] = {**query, "DurationMin": query["DurationMax"] + 1, "DurationMax": 0}
    if query["DurationMin"]:
        out["shorter than min"] = {**query, "DurationMin": 0, "DurationMax": query["DurationMin"] - 1}
    return out


WEEK_US = 7 * 24 * 3600 * 1_000_000


@pytest.mark.parametrize("case", QUERIES, ids=[q["Caption"] for q in QUERIES])
def test_find_traces_counter_examples(loaded, case):
    variants = {name: jaeger_params(q) for name, q in counter_queries(case["Query"]).items()}
    earlier = jaeger_params(case["Query"])
    earlier["start"] -= WEEK_US
    earlier["end"] -= WEEK_US
    variants["window a week earlier"] = earlier
    failures = []
    for name, params in variants.items():
        got = loaded.api.find_traces(**params)
        if got:
            failures.append(f"{name}: {params} found {sorted({t['traceID'] for t in got})}")
    assert failures == [], "\n".join(failures)


def test_get_services(loaded):
    expected = set().union(*(fixture_services(n) for n in FIXTURE_NAMES))
    assert {"example-service-1", "example-service-2", "example-service-3"} <= expected
    assert set(loaded.api.services()) == expected


def test_get_operations(loaded):
    assert sorted(loaded.api.operations("example-service-1")) == [
        "example-operation-1",
        "example-operation-3",
        "example-operation-4",
    ]
    ops = loaded.api.json("/api/operations", {"service": "example-service-1"})["data"]
    assert sorted((o["name"], o["spanKind"]) for o in ops) == [
        ("example-operation-1", ""),
        ("example-operation-3", "server"),
        ("example-operation-4", "client"),
    ]
    server_ops = loaded.api.json(
        "/api/operations", {"service": "example-service-1", "spanKind": "server"}
    )["data"]
    assert server_ops == [{"name": "example-operation-3", "spanKind": "server"}]


def test_get_trace(loaded):
    trace = loaded.api.trace("00000000000000000000000000000011")
    assert trace is not None
    assert len(trace["spans"]) == 5
    services = {trace["processes"][s["processID"]]["serviceName"] for s in trace["spans"]}
    assert services == {"example-service-1", "example-service-2", "example-service-3"}


def test_find_traces_after_restart(loaded):
    """After a clean restart (flush on SIGTERM), every case answers from Parquet the same."""
    loaded.restart()
    failures = []
    for case in QUERIES:
        expected = set()
        for name in case["ExpectedFixtures"]:
            expected |= set(fixture_traces(name))
        got = loaded.api.find_traces(**jaeger_params(case["Query"]))
        got_ids = {t["traceID"].lower().rjust(32, "0") for t in got}
        if got_ids != expected:
            failures.append(f"{case['Caption']}: got {sorted(got_ids)} expected {sorted(expected)}")
    assert failures == [], "\n".join(failures)
    assert loaded.parquet_files(), "no Parquet segment after a clean shutdown"
