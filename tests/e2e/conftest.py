"""Fixtures of the meshtrace end-to-end suite.

Owns: locating the binary, starting servers per test (`server`, `server_factory`), the
PostgreSQL catalog variant (`pg_catalog_url`, `pg_server`), cluster mode (`s3_endpoint`, a
moto S3 server; `cluster`, the shared settings of one cluster's nodes, whose NATS streams are
deleted afterwards), and attaching the server logs to the report of any failed test.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import requests

from mtlib import Server, eventually, find_binary, free_ports

PG_ADMIN = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1"]


@pytest.fixture(scope="session")
def meshtrace_bin() -> Path:
    path = find_binary()
    if not path.is_file():
        pytest.fail(
            f"meshtrace binary not found at {path}: build it (cargo build) or set MESHTRACE_BIN",
            pytrace=False,
        )
    return path


def _register(node, server: Server) -> None:
    servers = getattr(node, "_meshtrace_servers", None)
    if servers is None:
        servers = []
        node._meshtrace_servers = servers
    servers.append(server)


@pytest.fixture
def server_factory(request, tmp_path, meshtrace_bin):
    """Returns make(*extra_args, name=, data_dir=, catalog_url=, flush_age=, start=True)."""
    servers: list[Server] = []
    counter = iter(range(1, 1000))

    def make(*extra_args: str, start: bool = True, name: str | None = None, **kw) -> Server:
        s = Server(
            meshtrace_bin,
            tmp_path,
            *extra_args,
            name=name or f"server{next(counter)}",
            **kw,
        )
        servers.append(s)
        _register(request.node, s)
        if start:
            s.start()
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def server(server_factory) -> Server:
    """A fresh server with default limits, SQLite catalog and --flush-age 1s."""
    return server_factory()


@pytest.fixture
def pg_catalog_url():
    """A fresh PostgreSQL database (dropped afterwards) as a --catalog-url."""
    if shutil.which("psql") is None:
        pytest.fail("psql not found: PostgreSQL client and server are required", pytrace=False)
    name = f"meshtrace_e2e_{uuid.uuid4().hex[:12]}"
    subprocess.run(PG_ADMIN + ["-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    yield f"postgres://postgres@127.0.0.1:5432/{name}"
    subprocess.run(
        PG_ADMIN + ["-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
        check=False,
        capture_output=True,
    )


@pytest.fixture
def pg_server(pg_catalog_url, server_factory) -> Server:
    return server_factory(catalog_url=pg_catalog_url, name="pg")


# --------------------------------------------------------------------------------------------
# Cluster mode: NATS JetStream (already running), S3 (moto), PostgreSQL catalog
# --------------------------------------------------------------------------------------------

NATS_URL = "nats://127.0.0.1:4222"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "e2e", "AWS_SECRET_ACCESS_KEY": "e2e-secret"}
S3_REGION = "us-east-1"


def jetstream_api(subject: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    """One JetStream API request (`$JS.API.…`) over the plain NATS text protocol; returns the
    JSON answer. Enough for clean-up without a NATS client library."""
    inbox = f"_INBOX.{uuid.uuid4().hex}"
    payload = json.dumps(body).encode() if body is not None else b""
    host, port = NATS_URL.removeprefix("nats://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"INFO "), "not a NATS server"
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false}\r\n'
            + f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(payload)}\r\n".encode()
            + payload
            + b"\r\n"
        )
        while True:
            line = reader.readline()
            if not line:
                raise ConnectionError(f"NATS closed the connection before answering {subject}")
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise ConnectionError(f"NATS: {line.decode().strip()}")
            elif line.startswith(b"MSG "):
                size = int(line.split()[-1])
                return json.loads(reader.read(size + 2)[:size])


def delete_stream(name: str) -> None:
    """Deletes a JetStream stream (and so its consumers); a missing one is fine."""
    answer = jetstream_api(f"$JS.API.STREAM.DELETE.{name}")
    error = answer.get("error")
    if error and error.get("err_code") != 10059:  # 10059: stream not found
        raise AssertionError(f"deleting stream {name}: {error}")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on a free loopback port for the session; its URL."""
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.is_file():
        pytest.fail(f"{moto} not found: pip install -r tests/requirements.txt", pytrace=False)
    [port] = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:

        def answers():
            assert proc.poll() is None, f"moto_server exited: {log_path.read_text()[-2000:]}"
            return requests.get(url, timeout=2).status_code == 200

        eventually(answers, timeout=30, what=f"moto_server at {url}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, uniquely named bucket on the moto server."""
    name = f"meshtrace-e2e-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=name)
    return name


class Cluster:
    """The settings one cluster's nodes share (name, NATS, object store, PostgreSQL catalog,
    S3 environment) and a factory of its nodes."""

    def __init__(
        self,
        server_factory,
        workdir: Path,
        name: str,
        catalog_url: str,
        object_store: str,
        env: dict[str, str],
    ) -> None:
        self.make = server_factory
        self.workdir = workdir
        self.name = name
        self.catalog_url = catalog_url
        self.object_store = object_store
        self.env = env
        self.nodes: list[Server] = []
        # False once the nodes run on a private NATS server (`private_nats`), whose store is
        # removed with it: teardown then leaves the shared server alone.
        self.shared_nats = True

    def node(
        self,
        node_id: str,
        *extra_args: str,
        start: bool = True,
        nats_url: str = NATS_URL,
        catalog_url: str | None = None,
        env: dict[str, str] | None = None,
        config: str | None = None,
    ) -> Server:
        """A node of this cluster, named after its ID. The keyword arguments replace the
        cluster's settings for this node; `config` is TOML for --config."""
        args = [
            "--cluster", self.name,
            "--node-id", node_id,
            "--nats-url", nats_url,
            "--object-store", self.object_store,
        ]  # fmt: skip
        if config is not None:
            path = self.workdir / f"{node_id}.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        node = self.make(
            *args,
            *extra_args,
            start=start,
            name=node_id,
            catalog_url=catalog_url or self.catalog_url,
            env={**self.env, **(env or {})},
        )
        self.nodes.append(node)
        return node

    @property
    def streams(self) -> list[str]:
        """The JetStream streams the cluster created: its span stream and KV buckets, and its
        tenants' (all named after the cluster)."""
        names = jetstream_api("$JS.API.STREAM.NAMES", {"offset": 0}).get("streams") or []
        mine = (f"{self.name}_", f"KV_{self.name}_")
        return [n for n in names if n.startswith(mine)]


@pytest.fixture
def cluster(server_factory, tmp_path, pg_catalog_url, s3_endpoint, s3_bucket):
    """A new cluster (unique name, fresh PostgreSQL catalog, fresh bucket): `cluster.node(id)`
    starts its nodes. Afterwards the nodes are stopped and the cluster's NATS streams deleted."""
    c = Cluster(
        server_factory,
        tmp_path,
        name=f"e2e{uuid.uuid4().hex[:10]}",
        catalog_url=pg_catalog_url,
        object_store=f"s3://{s3_bucket}/segments",
        env={
            "AWS_ENDPOINT": s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": S3_REGION,
            **S3_CREDENTIALS,
        },
    )
    yield c
    for node in c.nodes:
        node.close()
    if c.shared_nats:
        for stream in c.streams:
            delete_stream(stream)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    servers = list(getattr(item, "_meshtrace_servers", []))
    servers += getattr(item.module, "_meshtrace_servers", [])
    for s in servers:
        rep.sections.append((f"meshtrace log: {s.name} ({s.log_path})", s.log_tail(200)))


# --------------------------------------------------------------------------------------------
# A private NATS JetStream server, for tests that stop and restart it
# --------------------------------------------------------------------------------------------

NATS_SERVER_BIN = Path("/usr/sbin/nats-server")  # the Debian package `nats-server`


class NatsServer:
    """One `nats-server -js` on a free loopback port with its own store dir and log file. The
    port and store dir stay the same across `stop()` / `start()`, so a restart brings the
    same streams back under the same URL."""

    def __init__(self, workdir: Path, name: str = "nats") -> None:
        self.name = name
        [self.port] = free_ports(1)
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store_dir = workdir / f"{name}-store"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> "NatsServer":
        """Starts it and waits until the port accepts connections and greets with INFO."""
        assert not self.running, f"{self.name} already running"
        self.starts += 1
        cmd = [str(NATS_SERVER_BIN), "-a", "127.0.0.1", "-p", str(self.port),
               "-js", "-sd", str(self.store_dir)]  # fmt: skip
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def greets() -> bool:
            assert self.proc.poll() is None, (
                f"nats-server exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    return sock.makefile("rb").readline().startswith(b"INFO ")
            except OSError as e:
                raise AssertionError(f"connect to {self.url}: {e}") from e

        eventually(greets, timeout=timeout, interval=0.1, what=f"nats-server at {self.url}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL if it hangs)."""
        if not self.running:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def log_tail(self, lines: int = 150) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@pytest.fixture
def private_nats(request, tmp_path):
    """A started private NATS JetStream server (`NatsServer`) the test may stop and restart;
    stopped afterwards, its store dir goes with tmp_path. Request it before `cluster`, so the
    nodes are stopped before it is."""
    if not NATS_SERVER_BIN.is_file():
        pytest.fail(
            f"{NATS_SERVER_BIN} not found: install the nats-server package "
            "(apt-get install nats-server)",
            pytrace=False,
        )
    nats = NatsServer(tmp_path)
    _register(request.node, nats)  # its log is attached to the report of a failed test
    try:
        yield nats.start()
    finally:
        nats.stop()
