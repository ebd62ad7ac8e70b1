"""TLS on every port (issue 22), with a CA and certificates made by the test with openssl:
the OpenTelemetry SDK exports over HTTPS and gRPC with TLS, the query API answers over
HTTPS, plain clients are refused, and a server that requires client certificates serves only
clients that present one signed by its client CA."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from mtlib import eventually, export_one_span


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=meshtrace test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=reviews-sidecar")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return {n: d / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.fixture
def pki(tmp_path, monkeypatch) -> dict[str, Path]:
    # requests lets these variables override a session's own `verify`: the SDK's and ours.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    d = tmp_path / "pki"
    d.mkdir()
    return make_pki(d)


def export(exporter) -> tuple[SpanExportResult, str]:
    return export_one_span(exporter, "tls-client", "GET /tls")


def test_every_port_speaks_tls(server_factory, pki):
    server = server_factory(
        "--tls-cert", str(pki["server.pem"]), "--tls-key", str(pki["server.key"]), tls_ca=pki["ca.pem"]
    )
    http_result, http_id = export(
        HttpExporter(endpoint=server.traces_url, certificate_file=str(pki["ca.pem"]), timeout=5)
    )
    assert http_result == SpanExportResult.SUCCESS
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].read_bytes())
    grpc_result, grpc_id = export(
        GrpcExporter(endpoint=f"https://{server.grpc_target}", credentials=creds, timeout=5)
    )
    assert grpc_result == SpanExportResult.SUCCESS
    for trace_id in (http_id, grpc_id):
        eventually(lambda: server.api.trace(trace_id), what=f"trace {trace_id} over HTTPS")
    zipkin = [{"traceId": "0" * 31 + "1", "id": "00000000000000a1", "name": "z", "timestamp": 1_700_000_000_000_000,
               "duration": 5, "localEndpoint": {"serviceName": "z"}}]
    r = requests.post(f"{server.zipkin_url}/api/v2/spans", json=zipkin, verify=str(pki["ca.pem"]), timeout=5)
    assert r.status_code == 202, r.text
    # A plain-text client gets no answer, and one that does not trust the CA fails verification.
    plain = f"http://127.0.0.1:{server.http_port}/readyz"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(plain, timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{server.query_url}/readyz", timeout=5)


def test_required_client_certificates_keep_out_clients_without_one(server_factory, pki, tmp_path):
    config = tmp_path / "meshtrace.toml"
    config.write_text(
        f'[tls]\ncert = "{pki["server.pem"]}"\nkey = "{pki["server.key"]}"\n'
        f'client_ca = "{pki["ca.pem"]}"\nclient_auth = "required"\n'
    )
    client = (str(pki["client.pem"]), str(pki["client.key"]))
    server = server_factory("--config", str(config), tls_ca=pki["ca.pem"], tls_client=client)
    assert server.api.get("/readyz").status_code == 200
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(f"{server.query_url}/readyz", verify=str(pki["ca.pem"]), timeout=5)
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca.pem"].read_bytes(),
        private_key=pki["client.key"].read_bytes(),
        certificate_chain=pki["client.pem"].read_bytes(),
    )
    result, trace_id = export(GrpcExporter(endpoint=f"https://{server.grpc_target}", credentials=creds, timeout=5))
    assert result == SpanExportResult.SUCCESS
    eventually(lambda: server.api.trace(trace_id), what="the trace sent with a client certificate")
