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


SIDECAR_ID = "spiffe://meshtrace.test/ns/default/sa/reviews"
ADMIN = "admin-token-0f6b2d9e4a"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=meshtrace test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    # The sidecar's mesh identity, as Istio's certificates carry it (a SPIFFE ID).
    (d / "client.ext").write_text(f"extendedKeyUsage=clientAuth\nsubjectAltName=URI:{SIDECAR_ID}\n")
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


def test_a_sidecar_authenticates_with_its_mesh_certificate(server_factory, pki, tmp_path):
    """An `[[auth.tokens]]` entry may name a client certificate identity instead of a token:
    the reviews sidecar, presenting its certificate (SPIFFE ID in its subject alternative
    names) and no bearer token, polls its own priorities and sends its spans over gRPC; it may
    not read another service's, and without the certificate it is 401."""
    config = tmp_path / "meshtrace.toml"
    config.write_text(
        f'[tls]\ncert = "{pki["server.pem"]}"\nkey = "{pki["server.key"]}"\nclient_ca = "{pki["ca.pem"]}"\n'
        f'[[auth.tokens]]\nname = "ops"\ntoken = "{ADMIN}"\nscopes = ["admin"]\n'
        f'[[auth.tokens]]\nname = "reviews-sidecar"\nclient_cert = "{SIDECAR_ID}"\n'
        'scopes = ["proxy", "ingest"]\nservices = ["reviews"]\n'
    )
    server = server_factory("--config", str(config), tls_ca=pki["ca.pem"])
    ca, cert = str(pki["ca.pem"]), (str(pki["client.pem"]), str(pki["client.key"]))
    q = f"{server.query_url}/api/v1/priorities"
    mine = requests.get(q, params={"service": "reviews", "node": "reviews-v1"}, verify=ca, cert=cert, timeout=5)
    assert mine.status_code == 200, mine.text
    other = requests.get(q, params={"service": "ratings"}, verify=ca, cert=cert, timeout=5)
    assert other.status_code == 403 and "reviews-sidecar" in other.json()["error"], other.text
    anonymous = requests.get(q, params={"service": "reviews"}, verify=ca, timeout=5)
    assert anonymous.status_code == 401, anonymous.text
    # A bearer token, when sent, decides (here one that does not exist).
    wrong = requests.get(q, params={"service": "reviews"}, verify=ca, cert=cert, timeout=5,
                         headers={"Authorization": "Bearer " + "x" * 20})
    assert wrong.status_code == 401, wrong.text

    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca.pem"].read_bytes(),
        private_key=pki["client.key"].read_bytes(),
        certificate_chain=pki["client.pem"].read_bytes(),
    )
    exporter = GrpcExporter(endpoint=f"https://{server.grpc_target}", credentials=creds, timeout=5)
    result, trace_id = export_one_span(exporter, "reviews", "GET /reviews")
    assert result == SpanExportResult.SUCCESS
    without = GrpcExporter(
        endpoint=f"https://{server.grpc_target}",
        credentials=grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].read_bytes()),
        timeout=5,
    )
    refused, refused_id = export_one_span(without, "reviews", "GET /reviews")
    assert refused == SpanExportResult.FAILURE

    def stored(trace: str) -> int:
        r = requests.get(f"{server.query_url}/api/traces/{trace}", verify=ca, timeout=5,
                         headers={"Authorization": f"Bearer {ADMIN}"})
        return r.status_code

    eventually(lambda: stored(trace_id) == 200, what="the span the sidecar sent with its certificate")
    assert stored(refused_id) == 404
