"""The query API against its OpenAPI documents, checked by schemathesis over real HTTP.

meshtrace's own `/api/v1` document is generated from the handlers' types (utoipa) and committed
as `docs/openapi.json`; the dashboard's TypeScript types are generated from the same file. Here
schemathesis reads it, generates valid and invalid requests for every operation, and checks
that valid ones are accepted, invalid ones refused with a 4xx, no answer is a 5xx, and every
answer matches the documented status codes, content types and schemas. The Jaeger api_v3
document (tests/fixtures/specs, from jaeger-idl) is checked the same way for the operations
meshtrace serves. What a schema cannot say is listed in `schemathesis.toml` beside this file.
"""

import json
import subprocess
import sys
from pathlib import Path

import requests

from mtlib import (
    FIXTURES,
    REPO_ROOT,
    Server,
    eventually,
    new_trace_id,
    now_ns,
    post_otlp_json,
    request_json,
    span_json,
)

ST = Path(sys.executable).with_name("st")
CONFIG = Path(__file__).with_name("schemathesis.toml")
OWN_DOCUMENT = REPO_ROOT / "docs" / "openapi.json"
JAEGER_V3 = FIXTURES / "specs" / "jaeger_api_v3_query_service.openapi.yaml"


def started(server_factory, tmp_path: Path) -> Server:
    """A server whose long polls end within a second, holding one stored trace."""
    config = tmp_path / "meshtrace.toml"
    config.write_text('[budgets]\nmax_wait = "1s"\n')
    server = server_factory("--config", str(config))
    trace = new_trace_id().hex()
    start = now_ns() - 5_000_000_000
    spans = [span_json(trace, "GET /", start, start + 2_000_000, attrs={"http.route": "/"})]
    assert post_otlp_json(server, request_json("frontend", spans)).status_code == 200
    eventually(
        lambda: requests.get(f"{server.query_url}/api/traces/{trace}", timeout=5).ok,
        what="the trace is queryable",
    )
    return server


def schemathesis(document: Path, server: Server, *args: str) -> None:
    cmd = [str(ST), "--config-file", str(CONFIG), "run", str(document)]
    cmd += ["--url", server.query_url, "--max-examples", "25", "--seed", "7", "--no-color"]
    run = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"schemathesis found failures:\n{run.stdout[-20000:]}\n{run.stderr}"


def test_the_served_document_is_the_committed_one(server):
    served = requests.get(f"{server.query_url}/api/v1/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/json")
    assert served.json() == json.loads(OWN_DOCUMENT.read_text())


def test_own_api_keeps_its_document(server_factory, tmp_path):
    schemathesis(OWN_DOCUMENT, started(server_factory, tmp_path))


def test_jaeger_api_v3_keeps_jaeger_document(server_factory, tmp_path):
    schemathesis(
        JAEGER_V3,
        started(server_factory, tmp_path),
        # The operations meshtrace serves; trace summaries, dependencies and POST search are
        # not served yet, so OPTIONS on /api/v3/traces rightly lists GET only.
        "--include-method",
        "GET",
        "--exclude-path",
        "/api/v3/dependencies",
        "--exclude-path",
        "/api/v3/trace-summaries",
        "--exclude-checks",
        # Jaeger's document marks no parameter required (protoc-gen-openapi writes "Required."
        # into descriptions only), though Jaeger refuses a search without a service, as we do.
        "positive_data_acceptance,allow_header_conformance",
    )
