"""Cluster mode (`meshtrace serve --cluster`): several nodes on NATS JetStream, an S3 object
store (moto) and one PostgreSQL catalog answer as one server.

Covers: three nodes fed by the OpenTelemetry SDK over OTLP HTTP and gRPC give every query the
same answer, and the same counts as a standalone server given the same load; `kill -9` of a
node under load loses no acknowledged span and duplicates none once the survivors have taken
its partitions over; each node compacts the segments it wrote; tenants stay apart across
nodes; a node whose NATS, object
store or catalog is missing refuses to start and says which; the partition count of a cluster
cannot change.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from mtlib import (
    Api,
    eventually,
    export_one_span,
    post_otlp_json,
    request_json,
    span_json,
    new_span_id,
    new_trace_id,
    now_ns,
    request_pb,
    span_pb,
    span_service,
    tag_map,
)

TRACES_PER_SENDER = 60
ERROR_EVERY = 5  # every 5th trace has a failed client span
SERVICES = {"n1": "cluster-frontend", "n2": "cluster-cart", "n3": "cluster-payment"}
PROTOCOLS = {"n1": "http", "n2": "grpc", "n3": "http+gzip"}

# --------------------------------------------------------------------------------------------
# Sending with the OpenTelemetry SDK
# --------------------------------------------------------------------------------------------


class RecordingExporter(SpanExporter):
    """Keeps every export's result, so a refused export fails the test as such."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.results: list[SpanExportResult] = []

    def export(self, spans):
        self.results.append(self.inner.export(spans))
        return self.results[-1]

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def exporter_for(server, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        return GrpcExporter(endpoint=f"http://{server.grpc_target}", insecure=True, timeout=10)
    gzip = protocol == "http+gzip"
    return HttpExporter(
        endpoint=server.traces_url,
        timeout=10,
        compression=HttpCompression.Gzip if gzip else HttpCompression.NoCompression,
    )


def send_with_sdk(server, service: str, protocol: str) -> dict[str, dict[str, bool]]:
    """Sends TRACES_PER_SENDER traces of 3 spans (server → client → internal) as `service`;
    returns {trace ID: {span ID: failed}} (hex IDs)."""
    exporter = RecordingExporter(exporter_for(server, protocol))
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("e2e.cluster")
    sent: dict[str, dict[str, bool]] = {}
    for i in range(TRACES_PER_SENDER):
        failed = i % ERROR_EVERY == 0
        with tracer.start_as_current_span("GET /checkout", kind=SpanKind.SERVER) as root:
            ctx = trace.set_span_in_context(root)
            with tracer.start_as_current_span(
                "call upstream", context=ctx, kind=SpanKind.CLIENT
            ) as call:
                if failed:
                    call.set_status(Status(StatusCode.ERROR, "upstream reset"))
                with tracer.start_as_current_span(
                    "encode", context=trace.set_span_in_context(call), kind=SpanKind.INTERNAL
                ) as enc:
                    pass
        trace_id = format(root.get_span_context().trace_id, "032x")
        sent[trace_id] = {
            format(root.get_span_context().span_id, "016x"): False,
            format(call.get_span_context().span_id, "016x"): failed,
            format(enc.get_span_context().span_id, "016x"): False,
        }
    assert provider.force_flush(10_000), "force_flush timed out"
    provider.shutdown()
    assert exporter.results and all(r == SpanExportResult.SUCCESS for r in exporter.results), (
        f"{service} via {protocol}: exports {exporter.results}"
    )
    return sent


# --------------------------------------------------------------------------------------------
# What a user sees
# --------------------------------------------------------------------------------------------


def counts(server) -> dict:
    """Span counts overall and per service, and the service list."""
    [[spans, distinct]] = server.api.sql_rows(
        "SELECT count(*), count(DISTINCT span_id) FROM spans"
    )
    per_service = server.api.sql_rows(
        "SELECT service_name, count(*), count(DISTINCT trace_id), "
        "sum(CASE WHEN status_code = 'error' THEN 1 ELSE 0 END) "
        "FROM spans GROUP BY service_name ORDER BY service_name"
    )
    return {
        "spans": int(spans),
        "distinct span ids": int(distinct),
        "per service [spans, traces, errors]": {
            s: [int(n), int(t), int(e)] for s, n, t, e in per_service
        },
        "services": sorted(server.api.services()),
    }


def expected_counts(sent: dict[str, dict[str, dict[str, bool]]]) -> dict:
    """What `counts` must answer for {service: {trace: {span: failed}}}."""
    per_service = {
        service: [
            sum(len(spans) for spans in traces.values()),
            len(traces),
            sum(failed for spans in traces.values() for failed in spans.values()),
        ]
        for service, traces in sent.items()
    }
    total = sum(n for n, _, _ in per_service.values())
    return {
        "spans": total,
        "distinct span ids": total,
        "per service [spans, traces, errors]": dict(sorted(per_service.items())),
        "services": sorted(sent),
    }


def trace_view(t: dict) -> dict:
    """A Jaeger trace as {span ID: (service, operation, parents, error tag)}: what the UI
    shows, independent of span order and process numbering."""
    view = {}
    for span in t["spans"]:
        parents = [r["spanID"] for r in span.get("references") or [] if r["refType"] == "CHILD_OF"]
        error = tag_map(span.get("tags")).get("error", (None, False))[1]
        view[span["spanID"]] = (span_service(t, span), span["operationName"], parents, error)
    return view


def answers(server, sent: dict[str, dict[str, dict[str, bool]]]) -> dict:
    """Everything the checks read from one node; fails (for `eventually`) until complete."""
    c = counts(server)
    assert c == expected_counts(sent), f"{server.name}: {c}"
    found = {
        service: sorted(
            t["traceID"]
            for t in server.api.find_traces(service=service, limit=1000, lookback="1h")
        )
        for service in sent
    }
    traces = {}
    for service, by_trace in sent.items():
        assert found[service] == sorted(by_trace), f"{server.name}: search by {service}"
        for trace_id, spans in by_trace.items():
            t = server.api.trace(trace_id)
            assert t is not None, f"{server.name}: trace {trace_id} not found"
            view = trace_view(t)
            assert {s: v[3] for s, v in view.items()} == spans, f"{server.name}: {trace_id}"
            assert {v[0] for v in view.values()} == {service}
            traces[trace_id] = view
    return {"counts": c, "found": found, "traces": traces}


def test_three_nodes_answer_as_one(cluster, server_factory):
    nodes = [cluster.node(node_id) for node_id in SERVICES]
    sent = {
        SERVICES[n.name]: send_with_sdk(n, SERVICES[n.name], PROTOCOLS[n.name]) for n in nodes
    }

    def complete(node):
        return eventually(lambda: answers(node, sent), timeout=20, what=f"all on {node.name}")

    with ThreadPoolExecutor(len(nodes)) as pool:  # the nodes are checked side by side
        per_node = list(pool.map(complete, nodes))
    first = per_node[0]
    for node, got in zip(nodes[1:], per_node[1:]):
        assert got == first, f"{node.name} answers differently from {nodes[0].name}"

    # An objective and an override set through one node apply on every node.
    objective = {"quantile": 0.99, "latency_ms": 250, "importance": 10}
    r = requests.put(f"{nodes[0].query_url}/api/v1/classes/checkout/objective", json=objective)
    assert r.status_code in (200, 204), r.text
    r = requests.put(f"{nodes[1].query_url}/api/v1/priorities/overrides", json={"checkout": 3})
    assert r.status_code in (200, 204), r.text
    for node in nodes:
        eventually(
            lambda: node.api.json("/api/v1/classes/checkout/objective")["objective"]["latency_ms"]
            == 250
            and node.api.json("/api/v1/priorities/overrides") == {"checkout": 3},
            timeout=5,
            what=f"objective and override on {node.name}",
        )

    # A standalone server given the same load answers the same counts.
    standalone = server_factory(name="standalone")
    sent_alone = {service: send_with_sdk(standalone, service, "http") for service in sent}
    alone = eventually(lambda: answers(standalone, sent_alone), timeout=20, what="standalone")
    assert alone["counts"] == first["counts"]


def test_each_node_compacts_the_segments_it_wrote(cluster):
    """Every flush of every node writes a segment to the bucket; each node merges its own in
    the background, and both nodes list the merged segments and answer as before."""
    config = "[storage]\ncompact_rows = 300\n"
    nodes = [cluster.node(node_id, config=config) for node_id in ("n1", "n2")]
    service = "cluster-compacted"
    sent: dict[str, dict[str, dict[str, bool]]] = {service: {}}
    for round_ in range(6):  # a flush (every 2 s) between rounds: one small segment each
        sent[service].update(send_with_sdk(nodes[round_ % 2], service, "http"))
        time.sleep(2.5)

    def compacted():
        flushed = sum(n.api.metric("meshtrace_flushes_total") for n in nodes)
        listed = [n.api.metric("meshtrace_segments") for n in nodes]
        assert max(listed) < flushed, f"{listed} segments listed, {flushed} flushed"
        return [answers(n, sent) for n in nodes]

    # The maintenance pass runs every 30 s.
    first, second = eventually(compacted, timeout=75, what="segments merged on both nodes")
    assert first == second
    assert first["counts"]["spans"] == 6 * TRACES_PER_SENDER * 3


def test_tenants_are_kept_apart_across_the_cluster(cluster):
    """Tenants in cluster mode: each tenant's spans, sent through any node, are found from
    every node by that tenant only (the default tenant and the others see none of them)."""
    nodes = [cluster.node(node_id) for node_id in ("n1", "n2")]
    sent = {}  # tenant (None: the default one) -> (service, trace ID)
    for tenant, node, protocol in [
        ("acme", nodes[0], "http"),
        ("acme.eu", nodes[1], "grpc"),  # a '.', which NATS names cannot hold
        (None, nodes[1], "http"),
    ]:
        headers = {"x-scope-orgid": tenant} if tenant else {}
        if protocol == "http":
            exporter = HttpExporter(endpoint=node.traces_url, headers=headers, timeout=10)
        else:
            exporter = GrpcExporter(
                endpoint=f"http://{node.grpc_target}",
                insecure=True,
                headers=tuple(headers.items()),
                timeout=10,
            )
        service = f"{tenant or 'single'}-frontend".replace(".", "-")
        result, trace_id = export_one_span(exporter, service, "GET /")
        assert result == SpanExportResult.SUCCESS, f"{tenant} via {node.name}: {result}"
        sent[tenant] = (service, trace_id)

    def found(node, tenant, service):
        api = Api(node.query_url)
        if tenant:
            api.session.headers["X-Scope-OrgID"] = tenant
        body = api.json("/api/traces", {"service": service, "lookback": "1h", "limit": 20})
        return {t["traceID"] for t in body["data"] or []}

    for node in nodes:
        for tenant, (service, trace_id) in sent.items():
            eventually(
                lambda: found(node, tenant, service) == {trace_id},
                timeout=20,
                what=f"{tenant}'s trace from {node.name}",
            )
            for other in sent:
                if other != tenant:
                    assert found(node, other, service) == set(), (
                        f"{node.name}: {other} sees {tenant}'s trace"
                    )


def test_a_trace_open_when_its_partition_moves_is_derived_from_all_its_spans(cluster):
    """A node that joins takes half the partitions over while traces are open: the first half
    of each trace went to the first node, the rest to the new owner. Every trace's derived row
    (the `traces` table, which the service graph and budgets read) counts all its spans."""
    config = (
        '[cluster]\nlease_ttl = "3s"\n'
        '[provenance]\nidle = "2s"\nflush_age = "1s"\n'
    )
    n1 = cluster.node("n1", config=config)
    service = "straddle-frontend"
    start = now_ns() - 1_000_000_000
    traces = [new_trace_id().hex() for _ in range(24)]
    roots = {t: new_span_id().hex() for t in traces}

    def children(t: str, names: list[str]) -> list[dict]:
        return [
            span_json(t, name, start + 1_000_000, start + 2_000_000, parent_hex=roots[t], kind=3)
            for name in names
        ]

    first = [span_json(t, "GET /", start, start + 9_000_000, span_id_hex=roots[t]) for t in traces]
    first += [s for t in traces for s in children(t, ["db"])]
    assert post_otlp_json(n1, request_json(service, first)).status_code == 200
    # The first halves are stored (flushed) before the partitions move.
    count = f"SELECT count(*) FROM spans WHERE service_name = '{service}'"
    eventually(lambda: int(n1.api.sql_rows(count)[0][0]) == 48, timeout=20, what="first halves")

    n2 = cluster.node("n2", config=config)
    eventually(
        lambda: n2.api.metric("meshtrace_cluster_partitions_owned") >= 8,
        timeout=30,
        what="n2 owns partitions",
    )
    second = [s for t in traces for s in children(t, ["cache", "auth"])]
    assert post_otlp_json(n2, request_json(service, second)).status_code == 200

    per_trace = (
        "SELECT encode(trace_id, 'hex'), span_count FROM traces "
        f"WHERE root_service = '{service}' ORDER BY 1"
    )

    def whole(node):
        rows = {t: int(n) for t, n in node.api.sql_rows(per_trace)}
        assert rows == {t: 4 for t in traces}, f"{node.name}: {rows}"
        return True

    for node in (n1, n2):
        eventually(lambda: whole(node), timeout=40, what=f"whole traces on {node.name}")


# --------------------------------------------------------------------------------------------
# kill -9 under load
# --------------------------------------------------------------------------------------------

SPANS_PER_REQUEST = 100  # an SDK's batch holds up to 512


class Load:
    """One thread per node posting OTLP protobuf requests (one new trace of SPANS_PER_REQUEST
    spans each) until stopped, recording which traces each node acknowledged with HTTP 200
    and when."""

    def __init__(self, nodes) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, list[tuple[float, str]]] = {n.name: [] for n in nodes}
        self.refused: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in nodes]

    def _run(self, node) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            trace_id = new_trace_id()
            t = now_ns()
            root = new_span_id()
            spans = [span_pb(trace_id, "root", t, t + 5_000_000, span_id=root)] + [
                span_pb(trace_id, f"child-{i}", t + i, t + i + 1000, parent=root, kind=3)
                for i in range(SPANS_PER_REQUEST - 1)
            ]
            body = request_pb(f"load-{node.name}", spans).SerializeToString()
            try:
                r = session.post(
                    node.traces_url,
                    data=body,
                    headers={"Content-Type": "application/x-protobuf"},
                    timeout=20,
                )
            except requests.RequestException:
                if not node.running:
                    return  # killed: nothing more to send it
                continue
            with self.lock:
                if r.status_code == 200:
                    self.acked[node.name].append((time.monotonic(), trace_id.hex()))
                else:
                    self.refused.append(f"{node.name}: HTTP {r.status_code} {r.text[:200]}")

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def acked_traces(self) -> set[str]:
        with self.lock:
            return {trace_id for acks in self.acked.values() for _, trace_id in acks}

    def acked_after(self, name: str, since: float) -> int:
        with self.lock:
            return sum(1 for at, _ in self.acked[name] if at > since)


def assert_exactly_once(server, acked: set[str]) -> bool:
    """Every acknowledged trace is stored with all its spans, and no span ID twice."""
    duplicated = server.api.sql_rows(
        "SELECT span_id, count(*) FROM spans GROUP BY span_id HAVING count(*) > 1 LIMIT 20"
    )
    assert not duplicated, f"{server.name}: duplicated span IDs (id, copies): {duplicated}"
    stored = {
        trace_id: (int(n), int(distinct))
        for trace_id, n, distinct in server.api.sql_rows(
            "SELECT trace_id, count(*), count(DISTINCT span_id) FROM spans "
            "WHERE service_name LIKE 'load-%' GROUP BY trace_id"
        )
    }
    complete = (SPANS_PER_REQUEST, SPANS_PER_REQUEST)
    incomplete = {t: stored.get(t) for t in acked if stored.get(t) != complete}
    assert not incomplete, (
        f"{server.name}: {len(incomplete)} of {len(acked)} acknowledged traces missing or "
        f"incomplete (trace: (spans, distinct span IDs) stored, None: absent), e.g. "
        f"{dict(list(incomplete.items())[:5])}"
    )
    return True


def test_kill9_loses_nothing_and_duplicates_nothing(cluster):
    config = '[cluster]\nlease_ttl = "3s"\n'
    n1, n2, n3 = (cluster.node(node_id, config=config) for node_id in ("n1", "n2", "n3"))

    with Load([n1, n2, n3]) as load:
        time.sleep(2)  # load on all three nodes
        n3.kill9()
        killed_at = time.monotonic()
        time.sleep(3)  # load on the survivors while they take n3's partitions over
    stopped_at = time.monotonic()

    acked = load.acked_traces()
    assert not load.refused, f"survivors refused requests: {load.refused[:5]}"
    for survivor in (n1, n2):
        assert load.acked_after(survivor.name, killed_at) > 0, f"{survivor.name} stopped acking"
    assert load.acked["n3"], "n3 acknowledged nothing before it was killed"

    for survivor in (n1, n2):
        eventually(
            lambda: assert_exactly_once(survivor, acked),
            timeout=40,
            interval=0.5,
            what=f"{len(acked)} acknowledged traces exactly once on {survivor.name}",
        )
    print(
        f"\n{len(acked)} acknowledged traces ({len(load.acked['n3'])} by n3 before kill -9) "
        f"complete on both survivors {time.monotonic() - stopped_at:.1f}s after the load "
        f"stopped"
    )
    for survivor in (n1, n2):
        [[n, distinct]] = survivor.api.sql_rows(
            "SELECT count(*), count(DISTINCT span_id) FROM spans"
        )
        assert int(n) == int(distinct) >= len(acked) * SPANS_PER_REQUEST


# --------------------------------------------------------------------------------------------
# Start-up refusals
# --------------------------------------------------------------------------------------------

EXIT_TIMEOUT_S = 15


def start_error(node) -> str:
    """Starts `node`, expects it to exit non-zero within EXIT_TIMEOUT_S; returns the error
    it printed (from `Error:` up to the backtrace)."""
    node.start(wait=False)
    try:
        code = node.proc.wait(EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{node.name} still running after {EXIT_TIMEOUT_S}s:\n{node.log_tail()}")
    assert code != 0, f"{node.name} exited with 0:\n{node.log_tail()}"
    run = node.log_text().rsplit("\n=== start #", 1)[-1]
    assert "\nError: " in run, f"{node.name} exited {code} without an error:\n{node.log_tail()}"
    return run.split("\nError: ", 1)[1].split("Stack backtrace:", 1)[0]


@pytest.mark.parametrize("missing", ["nats", "object store", "catalog"])
def test_start_fails_naming_the_missing_dependency(cluster, missing):
    if missing == "nats":
        node = cluster.node("n1", start=False, nats_url="nats://127.0.0.1:1")
        must_name = ["NATS", "nats://127.0.0.1:1"]
    elif missing == "object store":
        node = cluster.node("n1", start=False, env={"AWS_ENDPOINT": "http://127.0.0.1:1"})
        must_name = ["object store", cluster.object_store]
    else:
        base = cluster.catalog_url.rsplit("/", 1)[0]
        database = f"meshtrace_missing_{uuid.uuid4().hex[:8]}"
        node = cluster.node("n1", start=False, catalog_url=f"{base}/{database}")
        must_name = ["catalog", database]
    error = start_error(node)
    for word in must_name:
        assert word in error, f"the error does not name {word!r}:\n{error}"


def test_partition_count_is_fixed(cluster):
    cluster.node("n1", "--partitions", "8")
    error = start_error(cluster.node("n2", "--partitions", "16", start=False))
    assert "created with 8 partitions" in error, error
    # The same count joins.
    cluster.node("n3", "--partitions", "8")


# --------------------------------------------------------------------------------------------
# NATS outage
# --------------------------------------------------------------------------------------------

OUTAGE_SPANS = 3  # spans per request in the outage test


def otlp_body(service: str) -> tuple[str, bytes]:
    """A new trace of OUTAGE_SPANS spans as an OTLP protobuf request: (hex trace ID, body)."""
    trace_id = new_trace_id()
    t = now_ns()
    root = new_span_id()
    spans = [span_pb(trace_id, "root", t, t + 5_000_000, span_id=root)] + [
        span_pb(trace_id, f"child-{i}", t + i, t + i + 1000, parent=root, kind=3)
        for i in range(OUTAGE_SPANS - 1)
    ]
    return trace_id.hex(), request_pb(service, spans).SerializeToString()


def post_body(node, body: bytes) -> requests.Response:
    return requests.post(
        node.traces_url,
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )


def readyz(node) -> int:
    return requests.get(f"{node.query_url}/readyz", timeout=5).status_code


def stored(node, trace_id: str) -> tuple[int, int]:
    """(spans, distinct span IDs) stored for one trace. SQL answers trace IDs as hex text,
    but the column is 16 bytes: it compares with a hex blob literal."""
    [[n, distinct]] = node.api.sql_rows(
        "SELECT count(*), count(DISTINCT span_id) FROM spans "
        f"WHERE trace_id = X'{trace_id}'"
    )
    return int(n), int(distinct)


def test_nats_outage_answers_503_and_recovers(private_nats, cluster):
    cluster.shared_nats = False  # the streams live on the private server, removed with it
    node = cluster.node("n1", nats_url=private_nats.url)
    service = "outage-frontend"

    # 1. Up: acknowledged and queryable.
    first, body = otlp_body(service)
    r = post_body(node, body)
    assert r.status_code == 200, f"before the outage: HTTP {r.status_code} {r.text[:300]}"
    eventually(lambda: node.api.trace(first), timeout=20, what=f"trace {first} queryable")

    # 2. NATS stopped: ingest answers 503 with Retry-After, /readyz 503, the node stays up.
    private_nats.stop()
    outage_at = time.monotonic()
    acked_in_outage: list[str] = []  # a 200 here would be a finding, but must not be lost

    def within_10s() -> float:  # both checks count from the stop
        return max(0.1, outage_at + 10 - time.monotonic())

    eventually(
        lambda: readyz(node) == 503, timeout=within_10s(), what="/readyz 503 while NATS is down"
    )
    unready_after = time.monotonic() - outage_at

    def refused() -> tuple[str, bytes, requests.Response]:
        trace_id, body = otlp_body(service)
        r = post_body(node, body)
        if r.status_code == 200:
            acked_in_outage.append(trace_id)
        assert r.status_code == 503, f"HTTP {r.status_code} {r.text[:300]}"
        return trace_id, body, r

    refused_trace, refused_body, r = eventually(
        refused, timeout=within_10s(), interval=0.5, what="OTLP HTTP 503 while NATS is down"
    )
    refused_after = time.monotonic() - outage_at
    retry_after = r.headers.get("Retry-After")
    assert retry_after is not None, f"503 without Retry-After: {dict(r.headers)} {r.text[:300]}"
    assert retry_after.isdigit(), f"Retry-After is not a number of seconds: {retry_after!r}"
    assert readyz(node) == 503, "/readyz no longer 503 while NATS is down"
    assert node.running, f"the node exited during the NATS outage:\n{node.log_tail()}"
    outage_s = time.monotonic() - outage_at

    # 3. NATS back on the same port and store: ready, acknowledging, nothing lost or doubled.
    private_nats.start()
    back_at = time.monotonic()
    eventually(lambda: readyz(node) == 200, timeout=20, what="/readyz 200 after NATS is back")
    ready_after = time.monotonic() - back_at
    new, body = otlp_body(service)
    r = post_body(node, body)
    assert r.status_code == 200, f"after recovery: HTTP {r.status_code} {r.text[:300]}"
    r = post_body(node, refused_body)
    assert r.status_code == 200, (
        f"the refused request sent again: HTTP {r.status_code} {r.text[:300]}"
    )

    def all_stored() -> bool:
        for trace_id in (first, new, refused_trace, *acked_in_outage):
            assert node.api.trace(trace_id) is not None, f"trace {trace_id} not found"
            got = stored(node, trace_id)
            assert got == (OUTAGE_SPANS, OUTAGE_SPANS), (
                f"trace {trace_id}: (spans, distinct span IDs) stored {got}, "
                f"expected ({OUTAGE_SPANS}, {OUTAGE_SPANS})"
            )
        return True

    eventually(all_stored, timeout=20, interval=0.5, what="all traces stored exactly once")
    stored_after = time.monotonic() - back_at
    assert node.running, f"the node exited after the NATS outage:\n{node.log_tail()}"
    assert not acked_in_outage, f"acknowledged while NATS was down: {acked_in_outage}"
    print(
        f"\nNATS down: /readyz 503 after {unready_after:.1f}s, OTLP 503 (Retry-After: "
        f"{retry_after}) after {refused_after:.1f}s, outage {outage_s:.1f}s; NATS back: "
        f"/readyz 200 after {ready_after:.1f}s, all traces stored exactly once after "
        f"{stored_after:.1f}s"
    )


# --------------------------------------------------------------------------------------------
# Budgets and priorities, cluster-wide
# --------------------------------------------------------------------------------------------

PRIORITY_CONFIG = """
[cluster]
lease_ttl = "3s"
[budgets]
max_wait = "3s"
[budgets.objectives.batch]
quantile = 0.99
latency_ms = 5000
importance = 1
min_share = 0.2
[budgets.objectives.interactive]
quantile = 0.99
latency_ms = 50
importance = 10
"""


def class_traffic(n: int) -> list[dict]:
    """`n` traces of each class as OTLP/JSON bodies: frontend (120 ms) -> reviews (100 ms) for
    interactive, which misses its 50 ms objective, and batchjob (40 ms) -> reviews (20 ms)."""
    bodies = []
    for _ in range(n):
        for cls, root, root_ms, child_ms in [
            ("interactive", "frontend", 120, 100),
            ("batch", "batchjob", 40, 20),
        ]:
            trace, root_id, t = new_trace_id().hex(), new_span_id().hex(), now_ns() - 500_000_000
            top = span_json(trace, f"GET /{cls}", t, t + root_ms * 1_000_000,
                            span_id_hex=root_id, attrs={"mesh.class": cls})  # fmt: skip
            t2 = t + 5_000_000
            child = span_json(trace, "GET /reviews", t2, t2 + child_ms * 1_000_000,
                              parent_hex=root_id)  # fmt: skip
            bodies.append({
                "resourceSpans": request_json(root, [top])["resourceSpans"]
                + request_json("reviews", [child])["resourceSpans"]
            })  # fmt: skip
    return bodies


def reviews_set(node) -> dict:
    return node.api.json("/api/v1/priorities", {"service": "reviews"})


def level(s: dict, cls: str) -> int | None:
    return next((a["priority"] for a in s["assignments"] if a["class"] == cls), None)


def interactive_first(s: dict) -> bool:
    i, b = level(s, "interactive"), level(s, "batch")
    return i is not None and b is not None and i < b


def same_set_everywhere(nodes, check) -> dict:
    """The `reviews` set every node serves, once they all serve the same one and it passes
    `check`."""
    sets = [reviews_set(n) for n in nodes]
    assert all(s == sets[0] for s in sets), [(s["version"], s["assignments"]) for s in sets]
    assert check(sets[0]), sets[0]
    return sets[0]


def leaders(nodes) -> list:
    return [n for n in nodes if n.api.metric("meshtrace_priorities_leading") == 1]


def test_priorities_are_cluster_wide_and_survive_the_leader(cluster):
    fast = ("--provenance-idle", "1s", "--budget-step", "1s")
    nodes = [cluster.node(f"n{i}", *fast, config=PRIORITY_CONFIG) for i in (1, 2, 3)]
    eventually(lambda: len(leaders(nodes)) == 1, timeout=15, what="one leader")

    # Traces enter through every node, so each node assembles only some of them: the budgets
    # see them all only if observations are shared.
    for i, body in enumerate(class_traffic(20)):
        r = post_otlp_json(nodes[i % 3], body)
        assert r.status_code == 200, r.text
    first = eventually(
        lambda: same_set_everywhere(nodes, lambda s: s["version"] >= 1 and interactive_first(s)),
        timeout=40, what="interactive raised above batch at reviews, the same set on every node",
    )  # fmt: skip

    def all_traces_observed(n) -> bool:
        classes = {b["class"]: b for b in n.api.json("/api/v1/budgets")["classes"]}
        assert classes["interactive"]["samples"] == 20, f"{n.name}: {classes['interactive']}"
        return True

    for n in nodes:  # every node's budgets count the traces every node assembled
        eventually(lambda: all_traces_observed(n), timeout=15, what=f"budgets on {n.name}")

    # The leader dies: another node is elected, and versions go on from the stored ones.
    [leader] = leaders(nodes)
    leader.kill9()
    survivors = [n for n in nodes if n is not leader]
    eventually(lambda: len(leaders(survivors)) == 1, timeout=15, what="a new leader")
    r = requests.put(f"{survivors[0].query_url}/api/v1/priorities/overrides",
                     json={"interactive": 3}, timeout=5)  # fmt: skip
    assert r.status_code in (200, 204), r.text
    after = eventually(
        lambda: same_set_everywhere(survivors, lambda s: s["version"] > first["version"]
                                    and level(s, "interactive") == 3),
        timeout=20, what="the override published by the new leader on both survivors",
    )  # fmt: skip
    assert after["version"] > first["version"]
