"""Fixtures of the meshtrace end-to-end suite.

Owns: locating the binary, starting servers per test (`server`, `server_factory`), the
PostgreSQL catalog variant (`pg_catalog_url`, `pg_server`), and attaching the server logs
to the report of any failed test.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from mtlib import Server, find_binary

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
