"""The PostgreSQL catalog goes away ("storage faults"): segment flushes fail and back off,
/readyz says so, buffered rows stay bounded (503 with Retry-After at [storage]
max_buffered_rows), Parquet files whose commit failed are deleted at once, SIGTERM still exits
cleanly, and once the catalog is back every acknowledged span is stored exactly once.

The outage is real: the test database stops accepting connections (ALTER DATABASE ...
ALLOW_CONNECTIONS false) and the server's open connections are terminated. The psql client
(as conftest.py uses) does the administration: tests/requirements.txt has no PostgreSQL driver."""

from __future__ import annotations

import itertools
import subprocess
import time
from contextlib import contextmanager

import requests

from mtlib import (
    check_stored_once,
    eventually,
    log_has_no_panic,
    new_trace_id,
    now_ns,
    post_otlp_pb,
    request_pb,
    span_pb,
    wait_for_flush,
)

SERVICE = "outage-svc"
WHERE = f"service_name = '{SERVICE}'"
BATCH = 200
MAX_BUFFERED = 2000
OUTAGE_S = 20.0


# --------------------------------------------------------------------------------------------
# Taking the catalog database away
# --------------------------------------------------------------------------------------------


def psql(db: str, sql: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1",
         "-At", "-c", sql],
        check=check,
        capture_output=True,
        text=True,
    )  # fmt: skip


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def db_name(catalog_url: str) -> str:
    return catalog_url.rsplit("/", 1)[1]


@contextmanager
def catalog_outage(db: str):
    """The catalog database refuses connections and its open sessions are ended; allowed again
    on exit, whatever happens (so the fixture can drop it)."""
    psql("test", f"ALTER DATABASE {ident(db)} ALLOW_CONNECTIONS false")
    try:
        psql(
            "test",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {literal(db)}",
        )

        def no_sessions_left():
            out = psql(
                "test", f"SELECT count(*) FROM pg_stat_activity WHERE datname = {literal(db)}"
            ).stdout.strip()
            return out == "0"

        eventually(no_sessions_left, timeout=10, what=f"no sessions left on {db}")
        probe = psql(db, "SELECT 1", check=False)
        assert probe.returncode != 0 and "not currently accepting connections" in probe.stderr, (
            f"test bug: {db} still accepts connections: {probe.stdout} {probe.stderr}"
        )
        yield
    finally:
        psql("test", f"ALTER DATABASE {ident(db)} ALLOW_CONNECTIONS true")


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


class Load:
    """BATCH-span protobuf requests over OTLP/HTTP; span names say which request they came from
    ("req<i>-span<j>"); the names of acknowledged requests are kept."""

    def __init__(self, server) -> None:
        self.server = server
        self.counter = itertools.count()
        self.acked: list[str] = []
        self.session = requests.Session()

    def post(self) -> requests.Response:
        i = next(self.counter)
        trace = new_trace_id()
        t = now_ns()
        names = [f"req{i}-span{j}" for j in range(BATCH)]
        spans = [
            span_pb(trace, name, t + j, t + j + 1000, attrs={"req": i, "j": j})
            for j, name in enumerate(names)
        ]
        r = self.session.post(
            self.server.traces_url,
            data=request_pb(SERVICE, spans).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=60,
        )
        if r.status_code == 200:
            self.acked += names
        return r

    def post_ok(self) -> None:
        r = self.post()
        assert r.status_code == 200, f"request refused: {r.status_code}: {r.text[:500]}"


def readyz(server) -> requests.Response:
    return requests.get(f"{server.query_url}/readyz", timeout=5)


def flush_failures(server) -> float:
    return server.api.metric("meshtrace_flush_failures_total")


def write_config(tmp_path, text: str) -> str:
    path = tmp_path / "outage.toml"
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_catalog_outage_backs_off_bounds_the_buffer_and_loses_nothing(
    server_factory, pg_catalog_url, tmp_path
):
    config = write_config(tmp_path, f"[storage]\nmax_buffered_rows = {MAX_BUFFERED}\n")
    server = server_factory(
        "--config", config, catalog_url=pg_catalog_url, flush_age="1s", name="pg"
    )
    load = Load(server)
    r = readyz(server)
    assert (r.status_code, r.text) == (200, "ready\n"), f"/readyz -> {r.status_code}: {r.text!r}"

    # Before the outage: one request, flushed and committed; nothing left buffered.
    load.post_ok()
    wait_for_flush(server)
    failures_before = flush_failures(server)
    files_before = set(server.parquet_files())

    with catalog_outage(db_name(pg_catalog_url)):
        started = time.monotonic()
        log_offset = len(server.log_text())

        # Ingest does not need the catalog: the write-ahead log takes it.
        load.post_ok()
        eventually(
            lambda: flush_failures(server) > failures_before,
            timeout=15,
            what="meshtrace_flush_failures_total to count a failed flush",
        )

        def not_ready_for_flushes():
            r = readyz(server)
            assert r.status_code == 503, f"/readyz -> {r.status_code}: {r.text!r}"
            assert r.text.startswith("not ready:"), f"/readyz body {r.text!r}"
            assert "flush" in r.text.lower(), f"/readyz does not name failing flushes: {r.text!r}"
            return r.text

        body = eventually(not_ready_for_flushes, timeout=5, what="/readyz 503 naming flushes")
        print(f"/readyz during the outage: {body!r}")

        # Fill the buffer: at MAX_BUFFERED rows ingest refuses with 503 and a retry delay.
        refused = None
        for _ in range(MAX_BUFFERED // BATCH + 10):
            r = load.post()
            if r.status_code != 200:
                refused = r
                break
        acked_in_outage = len(load.acked) - BATCH
        assert refused is not None, (
            f"{acked_in_outage} rows acknowledged while flushes fail, no refusal at "
            f"max_buffered_rows = {MAX_BUFFERED}"
        )
        assert refused.status_code == 503, (
            f"at the buffer limit: {refused.status_code} (expected 503 while flushes fail): "
            f"{refused.text[:300]}"
        )
        assert int(refused.headers.get("Retry-After", "0")) >= 1, (
            f"503 without a Retry-After: {dict(refused.headers)}"
        )
        assert MAX_BUFFERED <= acked_in_outage <= MAX_BUFFERED + BATCH, (
            f"{acked_in_outage} rows acknowledged during the outage, expected the refusals to "
            f"start at max_buffered_rows = {MAX_BUFFERED}"
        )

        # The rest of the outage: requests keep being refused (the buffer does not grow) and
        # no Parquet file is left behind by a failed commit.
        most_files = len(files_before)
        statuses = []
        while time.monotonic() - started < OUTAGE_S:
            most_files = max(most_files, len(server.parquet_files()))
            r = load.post()
            statuses.append(r.status_code)
            assert server.running, f"the server died during the outage:\n{server.log_tail()}"
            time.sleep(1)
        assert set(statuses) == {503}, f"answers with a full buffer during the outage: {statuses}"

        def no_new_files():
            new = set(server.parquet_files()) - files_before
            assert not new, f"Parquet files left by failed commits: {sorted(p.name for p in new)}"
            return True

        eventually(no_new_files, timeout=5, what="no Parquet file beyond the committed ones")
        assert most_files <= len(files_before) + 1, (
            f"{most_files} Parquet files seen during the outage, {len(files_before)} before it"
        )

        failures = flush_failures(server) - failures_before
        log = server.log_text()[log_offset:]
        failed_lines = [line for line in log.splitlines() if "flush failed" in line.lower()]
        elapsed = time.monotonic() - started
        print(f"{failures:.0f} failures, {len(failed_lines)} 'flush failed' lines, {elapsed:.1f}s")
        assert failures >= 2, f"meshtrace_flush_failures_total rose by {failures} in {elapsed:.0f}s"
        assert 1 <= len(failed_lines) <= 10, (
            f"{len(failed_lines)} 'flush failed' log lines in {elapsed:.0f}s of outage "
            f"(expected backoff, 1 to 10):\n" + "\n".join(failed_lines[:15])
        )
        assert readyz(server).status_code == 503

    # The catalog is back: the next retry (at most 30 s of backoff away) succeeds by itself.
    def ready():
        r = readyz(server)
        assert (r.status_code, r.text) == (200, "ready\n"), f"/readyz -> {r.status_code}: {r.text!r}"
        return True

    eventually(ready, timeout=40, interval=0.5, what="/readyz 200 after the catalog came back")
    load.post_ok()
    check_stored_once(server, load.acked, WHERE, "after the outage")
    log_has_no_panic(server)
    server.restart()
    check_stored_once(server, load.acked, WHERE, "after a clean restart")


def test_sigterm_during_a_catalog_outage_is_clean_and_loses_nothing(
    server_factory, pg_catalog_url
):
    server = server_factory(catalog_url=pg_catalog_url, flush_age="1s", name="pg")
    load = Load(server)
    load.post_ok()
    wait_for_flush(server)
    files_before = set(server.parquet_files())
    failures_before = flush_failures(server)

    with catalog_outage(db_name(pg_catalog_url)):
        for _ in range(5):
            load.post_ok()
        eventually(
            lambda: flush_failures(server) > failures_before,
            timeout=15,
            what="meshtrace_flush_failures_total to count a failed flush",
        )
        code = server.stop()
        assert code == 0, f"exit code {code} after SIGTERM during the outage:\n{server.log_tail()}"
        log_has_no_panic(server)
        new = set(server.parquet_files()) - files_before
        assert not new, (
            f"Parquet files left by commits that failed: {sorted(p.name for p in new)}"
        )

    server.start()
    check_stored_once(server, load.acked, WHERE, "after the restart")
    wait_for_flush(server, at_least=1)
    time.sleep(1.5)
    check_stored_once(server, load.acked, WHERE, "after the replayed log was flushed")
