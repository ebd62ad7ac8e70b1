"""Helpers for the meshtrace end-to-end tests.

Owns: starting and stopping the real `meshtrace serve` binary on free loopback ports
(`Server`), small HTTP clients for the query API (`Api`), Prometheus text parsing, and
builders for OTLP requests in protobuf and JSON form. No test logic lives here.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------------------------
# Ports and processes
# --------------------------------------------------------------------------------------------

_port_lock = threading.Lock()


def free_ports(n: int) -> list[int]:
    """Returns n distinct free TCP ports on 127.0.0.1 (all sockets held until all are chosen)."""
    with _port_lock:
        socks = []
        try:
            for _ in range(n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            return [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()


def find_binary() -> Path:
    """The meshtrace binary: $MESHTRACE_BIN, else the dev build in $CARGO_TARGET_DIR."""
    env = os.environ.get("MESHTRACE_BIN")
    if env:
        return Path(env)
    target = os.environ.get(
        "CARGO_TARGET_DIR", os.path.expanduser("~/.cache/meshtrace/target")
    )
    return Path(target) / "debug" / "meshtrace"


def server_env() -> dict[str, str]:
    """The environment for a child meshtrace process: ours without MESHTRACE_* (the server
    reads its settings from MESHTRACE_<FLAG>, so the test runner's own variables must not
    leak into it). MESHTRACE_LOG, the log filter, is passed on."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESHTRACE_") or k == "MESHTRACE_LOG"
    }
    env.setdefault("RUST_BACKTRACE", "1")
    env.setdefault("NO_COLOR", "1")
    return env


class ServerError(AssertionError):
    pass


class Server:
    """One `meshtrace serve` (or `demo`, which takes the same flags) process with its own data
    dir, log file and four loopback ports.

    The ports stay the same across `restart()` so clients can keep their URLs.
    """

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        *extra_args: str,
        name: str = "server",
        data_dir: Path | None = None,
        catalog_url: str | None = None,
        flush_age: str = "1s",
        subcommand: str = "serve",
        http_host: str = "127.0.0.1",
        tls_ca: Path | None = None,
        tls_client: tuple[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.binary = Path(binary)
        # Extra environment for the child (e.g. AWS_* for an s3:// object store).
        self.env = dict(env or {})
        self.subcommand = subcommand
        self.http_host = http_host
        # With a CA (the server was given --tls-cert/--tls-key): https URLs, verified by it.
        self.tls_ca = tls_ca
        self.scheme = "https" if tls_ca else "http"
        # (certificate, key) the probes and `api` present when the server requires one.
        self.tls_client = tls_client
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.data_dir = Path(data_dir) if data_dir else self.workdir / f"{name}-data"
        self.catalog_url = catalog_url
        self.flush_age = flush_age
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / f"{name}.log"
        (
            self.otlp_grpc_port,
            self.otlp_http_port,
            self.zipkin_port,
            self.http_port,
        ) = free_ports(4)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.api = Api(self.query_url)
        if tls_ca:
            self.api.session.verify = str(tls_ca)
            self.api.session.cert = tls_client

    # URLs ------------------------------------------------------------------------------------
    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.otlp_grpc_port}"

    @property
    def otlp_http_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.otlp_http_port}"

    @property
    def traces_url(self) -> str:
        return f"{self.otlp_http_url}/v1/traces"

    @property
    def zipkin_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.zipkin_port}"

    @property
    def query_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    # Lifecycle -------------------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [
            str(self.binary),
            self.subcommand,
            "--data-dir",
            str(self.data_dir),
            "--otlp-grpc-listen",
            self.grpc_target,
            "--otlp-http-listen",
            f"127.0.0.1:{self.otlp_http_port}",
            "--zipkin-listen",
            f"127.0.0.1:{self.zipkin_port}",
            "--http-listen",
            f"{self.http_host}:{self.http_port}",
            "--flush-age",
            self.flush_age,
        ]
        if self.catalog_url:
            cmd += ["--catalog-url", self.catalog_url]
        return cmd + self.extra_args

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> "Server":
        assert not self.running, "server already running"
        self.starts += 1
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**server_env(), **self.env},
                cwd=self.workdir,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"meshtrace exited with code {self.proc.returncode} before it was ready\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}"
                )
            try:
                verify = str(self.tls_ca) if self.tls_ca else True
                r = requests.get(
                    f"{self.query_url}/readyz", timeout=2, verify=verify, cert=self.tls_client
                )
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                last = repr(e)
            time.sleep(0.1)
        raise ServerError(
            f"meshtrace not ready after {timeout}s (last: {last})\n"
            f"--- {self.log_path} ---\n{self.log_tail()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; returns the exit code (kills and raises if it hangs)."""
        assert self.proc is not None, "server never started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise ServerError(
                    f"meshtrace did not exit within {timeout}s of SIGTERM\n{self.log_tail()}"
                )
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self, check: bool = True) -> "Server":
        """Graceful stop (exit code 0 expected when `check`) and start on the same data dir."""
        code = self.stop()
        if check and code != 0:
            raise ServerError(
                f"meshtrace exited with {code} after SIGTERM (expected 0)\n{self.log_tail()}"
            )
        return self.start()

    def close(self) -> None:
        """Teardown: stop whatever is still running, never raise."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.stop(timeout=15)
        except Exception:  # noqa: BLE001 - teardown must not mask the test result
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def log_tail(self, lines: int = 150) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def parquet_files(self) -> list[Path]:
        return sorted(self.data_dir.rglob("*.parquet"))


# --------------------------------------------------------------------------------------------
# Query API client
# --------------------------------------------------------------------------------------------


class Api:
    """Thin client for the query port (:16686)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()

    def get(self, path: str, params: Any = None, expect: int | None = 200) -> requests.Response:
        r = self.session.get(self.base + path, params=params, timeout=30)
        if expect is not None:
            assert r.status_code == expect, (
                f"GET {r.url} -> {r.status_code} (expected {expect}): {r.text[:1000]}"
            )
        return r

    def json(self, path: str, params: Any = None) -> Any:
        return self.get(path, params).json()

    def services(self) -> list[str]:
        body = self.json("/api/services")
        return body["data"] or []

    def operations(self, service: str) -> list[str]:
        return self.json(f"/api/services/{service}/operations")["data"] or []

    def trace(self, trace_id: str) -> dict | None:
        """Jaeger JSON of one trace, or None on 404."""
        r = self.get(f"/api/traces/{trace_id}", expect=None)
        if r.status_code == 404:
            return None
        assert r.status_code == 200, f"GET {r.url} -> {r.status_code}: {r.text[:1000]}"
        data = r.json()["data"]
        assert isinstance(data, list) and len(data) == 1, f"{r.url}: {str(data)[:500]}"
        return data[0]

    def find_traces(self, **params: Any) -> list[dict]:
        return self.json("/api/traces", params)["data"] or []

    def sql_response(self, sql: str) -> requests.Response:
        return self.session.post(self.base + "/api/v1/sql", json={"sql": sql}, timeout=60)

    def sql(self, sql: str) -> dict:
        r = self.sql_response(sql)
        assert r.status_code == 200, f"SQL {sql!r} -> {r.status_code}: {r.text[:1000]}"
        body = r.json()
        assert set(body) >= {"columns", "rows"}, body
        return body

    def sql_rows(self, sql: str) -> list[list]:
        body = self.sql(sql)
        assert body.get("truncated") is False, f"SQL {sql!r} was truncated"
        return body["rows"]

    def metrics_text(self) -> str:
        return self.get("/metrics").text

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics_text(), name, **labels)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Parses Prometheus text exposition into (name, labels, value) samples."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            label_text, value_part = rest.rsplit("}", 1)
            labels = {}
            for part in _split_labels(label_text):
                k, v = part.split("=", 1)
                labels[k.strip()] = v.strip().strip('"')
        else:
            name, value_part = line.split(None, 1)
            labels = {}
        value = value_part.split()[0]
        out.append((name.strip(), labels, float(value)))
    return out


def _split_labels(text: str) -> Iterable[str]:
    part, quoted = "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            if part.strip():
                yield part
            part = ""
        else:
            part += ch
    if part.strip():
        yield part


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`; 0 if none."""
    total = 0.0
    for n, ls, v in parse_metrics(text):
        if n == name and all(ls.get(k) == want for k, want in labels.items()):
            total += v
    return total


def metric_names(text: str) -> set[str]:
    return {n for n, _, _ in parse_metrics(text)}


def eventually(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.2, what: str = ""):
    """Calls fn until it returns a truthy value without raising AssertionError; returns it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except (AssertionError, requests.RequestException) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: {last}")
        time.sleep(interval)


def wait_for_flush(server: Server, at_least: float = 1, timeout: float = 20.0) -> None:
    """Waits until meshtrace_flushes_total reaches `at_least` and a Parquet file exists."""
    eventually(
        lambda: server.api.metric("meshtrace_flushes_total") >= at_least
        and server.parquet_files(),
        timeout=timeout,
        what=f"meshtrace_flushes_total >= {at_least} and a .parquet file in {server.data_dir}",
    )


# --------------------------------------------------------------------------------------------
# OTLP builders
# --------------------------------------------------------------------------------------------

_id_counter = itertools.count(1)
_id_lock = threading.Lock()


def new_span_id() -> bytes:
    """A process-unique, non-zero 8-byte span ID (random high part, counter low part)."""
    with _id_lock:
        n = next(_id_counter)
    return (os.urandom(4) + n.to_bytes(4, "big")) if n < 2**32 else os.urandom(8)


def new_trace_id() -> bytes:
    return os.urandom(16)


def now_ns() -> int:
    return time.time_ns()


def any_value_pb(v: Any) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    if isinstance(v, bytes):
        return common_pb2.AnyValue(bytes_value=v)
    return common_pb2.AnyValue(string_value=str(v))


def attrs_pb(attrs: dict[str, Any] | None) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value_pb(v)) for k, v in (attrs or {}).items()]


def span_pb(
    trace_id: bytes,
    name: str,
    start_ns: int,
    end_ns: int,
    span_id: bytes | None = None,
    parent: bytes | None = None,
    kind: int = trace_pb2.Span.SPAN_KIND_SERVER,
    attrs: dict[str, Any] | None = None,
) -> trace_pb2.Span:
    return trace_pb2.Span(
        trace_id=trace_id,
        span_id=span_id or new_span_id(),
        parent_span_id=parent or b"",
        name=name,
        kind=kind,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns,
        attributes=attrs_pb(attrs),
    )


def request_pb(
    service: str, spans: list[trace_pb2.Span], resource_attrs: dict[str, Any] | None = None
) -> trace_service_pb2.ExportTraceServiceRequest:
    resource = resource_pb2.Resource(
        attributes=attrs_pb({"service.name": service, **(resource_attrs or {})})
    )
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource,
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(name="meshtrace-e2e"),
                        spans=spans,
                    )
                ],
            )
        ]
    )


def any_value_json(v: Any) -> dict:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, bytes):
        return {"bytesValue": base64.b64encode(v).decode()}
    return {"stringValue": str(v)}


def attrs_json(attrs: dict[str, Any] | None) -> list[dict]:
    return [{"key": k, "value": any_value_json(v)} for k, v in (attrs or {}).items()]


def span_json(
    trace_id_hex: str,
    name: str,
    start_ns: int,
    end_ns: int,
    span_id_hex: str | None = None,
    parent_hex: str | None = None,
    kind: int = 2,
    attrs: dict[str, Any] | None = None,
) -> dict:
    span = {
        "traceId": trace_id_hex,
        "spanId": span_id_hex or new_span_id().hex(),
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(end_ns),
        "attributes": attrs_json(attrs),
    }
    if parent_hex:
        span["parentSpanId"] = parent_hex
    return span


def request_json(service: str, spans: list[dict], resource_attrs: dict | None = None) -> dict:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": attrs_json({"service.name": service, **(resource_attrs or {})})
                },
                "scopeSpans": [{"scope": {"name": "meshtrace-e2e"}, "spans": spans}],
            }
        ]
    }


def post_otlp_json(server: Server, body: Any, **kw: Any) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return requests.post(server.traces_url, data=data, headers=headers, timeout=60, **kw)


def post_otlp_pb(server: Server, req: Any, **kw: Any) -> requests.Response:
    data = req if isinstance(req, bytes) else req.SerializeToString()
    headers = {"Content-Type": "application/x-protobuf", **kw.pop("headers", {})}
    return requests.post(server.traces_url, data=data, headers=headers, timeout=60, **kw)


def error_message(r: requests.Response) -> str:
    """The error text of an HTTP error answer: JSON {"error"}, a google.rpc.Status, or text."""
    ctype = r.headers.get("Content-Type", "")
    if "json" in ctype:
        try:
            body = r.json()
            if isinstance(body, dict) and body.get("error"):
                return str(body["error"])
        except ValueError:
            pass
    if "protobuf" in ctype:
        from google.rpc import status_pb2

        st = status_pb2.Status()
        try:
            st.ParseFromString(r.content)
            if st.message:
                return st.message
        except Exception:  # noqa: BLE001
            pass
    return r.text.strip()


# --------------------------------------------------------------------------------------------
# Jaeger JSON helpers
# --------------------------------------------------------------------------------------------


def tag_map(tags: list[dict] | None) -> dict[str, tuple[str, Any]]:
    return {t["key"]: (t.get("type"), t.get("value")) for t in (tags or [])}


def span_service(trace: dict, span: dict) -> str:
    return trace["processes"][span["processID"]]["serviceName"]


def trace_ids(traces: list[dict]) -> set[str]:
    return {t["traceID"] for t in traces}


def v3_spans(body: dict) -> list[tuple[str, dict]]:
    """Flattens an api_v3 `{"result": {"resourceSpans": [...]}}` into (service, span) pairs."""
    result = body.get("result", body)
    out = []
    for rs in result.get("resourceSpans") or []:
        service = None
        for kv in (rs.get("resource") or {}).get("attributes") or []:
            if kv["key"] == "service.name":
                service = kv["value"].get("stringValue")
        for ss in rs.get("scopeSpans") or []:
            for s in ss.get("spans") or []:
                out.append((service, s))
    return out


def v3_attr(span: dict, key: str) -> dict | None:
    for kv in span.get("attributes") or []:
        if kv["key"] == key:
            return kv["value"]
    return None


def norm_id(v: str) -> str:
    """api_v3 IDs are hex per the OTLP JSON mapping; accept base64 too (protobuf JSON)."""
    v = v or ""
    if all(c in "0123456789abcdefABCDEF" for c in v) and len(v) in (16, 32):
        return v.lower()
    return base64.b64decode(v).hex()


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def micros(t: dt.datetime) -> int:
    """Exact µs since the epoch (no float rounding)."""
    return (t - _EPOCH) // dt.timedelta(microseconds=1)


def export_one_span(exporter: Any, service: str, name: str) -> tuple[Any, str]:
    """Exports one span through a real OpenTelemetry SDK pipeline with `exporter`; returns the
    exporter's result and the span's trace ID (hex)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    results = []

    class Recording:
        def export(self, spans):
            results.append(exporter.export(spans))
            return results[-1]

        def shutdown(self):
            exporter.shutdown()

        def force_flush(self, timeout_millis=1000):
            return True

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(Recording()))
    with provider.get_tracer("e2e").start_as_current_span(name) as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    return results[0], trace_id


# --------------------------------------------------------------------------------------------
# Exactly-once checks over SQL (span names encode the request: "req<i>-span<j>")
# --------------------------------------------------------------------------------------------


def stored_name_counts(server: Server, where: str = "TRUE") -> dict[str, int]:
    """span name -> rows stored, over SQL (paged so no answer is truncated)."""
    out: dict[str, int] = {}
    page, offset = 5000, 0
    while True:
        rows = server.api.sql_rows(
            f"SELECT name, count(*) AS n FROM spans WHERE {where} "
            f"GROUP BY name ORDER BY name LIMIT {page} OFFSET {offset}"
        )
        for name, n in rows:
            assert name not in out, f"span name {name!r} returned twice by GROUP BY"
            out[name] = int(n)
        if len(rows) < page:
            return out
        offset += page


def summarize_names(names: Iterable[str], limit: int = 8) -> str:
    """'req3 (200 spans), req7 (1 span: req7-span4), ...': names grouped by request prefix."""
    groups: dict[str, list[str]] = {}
    for n in sorted(names):
        groups.setdefault(n.split("-", 1)[0], []).append(n)
    parts = []
    for req, members in list(groups.items())[:limit]:
        if len(members) == 1:
            parts.append(f"{req} (1 span: {members[0]})")
        else:
            parts.append(f"{req} ({len(members)} spans, e.g. {members[0]})")
    more = f", and {len(groups) - limit} more requests" if len(groups) > limit else ""
    return ", ".join(parts) + more


def check_stored_once(
    server: Server, expected: Iterable[str], where: str = "TRUE", what: str = ""
) -> None:
    """Asserts that the spans matching `where` are exactly the spans named `expected`, each
    stored once: no name missing, none doubled, none unexpected, and count(*) and
    count(DISTINCT span_id) both equal to the number of expected spans."""
    expected = list(expected)
    assert len(set(expected)) == len(expected), "test bug: expected names are not distinct"
    counts = stored_name_counts(server, where)
    missing = [n for n in expected if n not in counts]
    doubled = {n: c for n, c in counts.items() if c > 1}
    unexpected = set(counts) - set(expected)
    prefix = f"{what}: " if what else ""
    problems = []
    if missing:
        problems.append(f"{len(missing)} acknowledged spans missing: {summarize_names(missing)}")
    if doubled:
        problems.append(
            f"{len(doubled)} spans stored more than once: {summarize_names(doubled)} "
            f"(counts e.g. {sorted(doubled.items())[:5]})"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} spans stored that were never acknowledged: "
            f"{summarize_names(unexpected)}"
        )
    assert not problems, prefix + "; ".join(problems)
    [[n, distinct]] = server.api.sql_rows(
        f"SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans WHERE {where}"
    )
    assert (int(n), int(distinct)) == (len(expected), len(expected)), (
        f"{prefix}count(*) = {n}, count(DISTINCT span_id) = {distinct}, "
        f"expected both {len(expected)}"
    )


def log_has_no_panic(server: Server) -> None:
    """Asserts the server log has neither a panic nor a backtrace."""
    text = server.log_text()
    bad = [
        line
        for line in text.splitlines()
        if "panicked" in line.lower() or "backtrace" in line.lower()
    ]
    assert not bad, f"{server.log_path} has a panic or backtrace:\n" + "\n".join(bad[:20])
