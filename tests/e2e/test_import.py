"""`meshtrace import`: Zipkin and Nezha CSV files into a running server (--to) and into an
empty data dir that a server then serves (--data-dir)."""

from __future__ import annotations

import csv
import re
import subprocess

from mtlib import FIXTURES, eventually, server_env, span_service

YELP = FIXTURES / "zipkin" / "yelp.json"
YELP_TRACE = "a03ee8fff1dcd9b9".rjust(32, "0")
YELP_SERVICES = {"mobile_api", "routing", "spectre", "unknown", "yelp-main", "yelp_main/api_proxy"}
NEZHA = FIXTURES / "nezha" / "tt_2023-01-29_13_33_trace.csv"
SUMMARY = re.compile(r"imported (\d+) spans \((\d+) rejected\) from (\d+) files?")
OLD_DATA = ("--retention", "5000d")  # the fixtures are years old


def run_import(binary, *args: str) -> tuple[int, int, int]:
    p = subprocess.run(
        [str(binary), "import", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        env=server_env(),
    )
    output = p.stdout + p.stderr
    assert p.returncode == 0, f"import {args} exited {p.returncode}:\n{output[-3000:]}"
    m = SUMMARY.search(output)
    assert m, f"no summary line in import output:\n{output[-3000:]}"
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def nezha_expected() -> tuple[int, int, set[str]]:
    with NEZHA.open(newline="") as f:
        rows = list(csv.DictReader(f))
    services = {r["PodName"].rsplit("-", 2)[0] for r in rows}
    return len(rows), len({r["TraceID"] for r in rows}), services


def check_yelp(server) -> None:
    trace = eventually(lambda: server.api.trace(YELP_TRACE), what="yelp trace")
    # 16 records, 13 distinct IDs as stored; the 3 shared SERVER halves get their own IDs.
    assert len({s["spanID"] for s in trace["spans"]}) == len(trace["spans"]) == 16
    assert {span_service(trace, s) for s in trace["spans"]} == YELP_SERVICES


def test_import_zipkin_and_nezha_to_running_server(server_factory, meshtrace_bin):
    server = server_factory(*OLD_DATA)
    assert run_import(meshtrace_bin, "--format", "zipkin", str(YELP), "--to", server.otlp_http_url) == (
        16,
        0,
        1,
    )
    check_yelp(server)
    assert set(server.api.services()) == YELP_SERVICES

    spans, traces, services = nezha_expected()
    assert (spans, traces, len(services)) == (4063, 52, 28)
    assert run_import(
        meshtrace_bin, "--format", "nezha-csv", str(NEZHA), "--to", server.otlp_http_url
    ) == (spans, 0, 1)
    eventually(
        lambda: set(server.api.services()) == YELP_SERVICES | services, what="nezha services"
    )
    [[n, t]] = server.api.sql_rows(
        "SELECT count(*), count(DISTINCT trace_id) FROM spans WHERE service_name LIKE 'ts-%'"
    )
    assert (int(n), int(t)) == (spans, traces)


def test_import_into_data_dir_then_serve(server_factory, meshtrace_bin, tmp_path):
    data_dir = tmp_path / "imported"
    data_dir.mkdir()
    assert run_import(
        meshtrace_bin, "--format", "zipkin", str(YELP), "--data-dir", str(data_dir)
    ) == (16, 0, 1)
    server = server_factory(*OLD_DATA, data_dir=data_dir)
    check_yelp(server)
    assert set(server.api.services()) == YELP_SERVICES
    [[n]] = server.api.sql_rows("SELECT count(*) FROM spans")
    assert int(n) == 16
