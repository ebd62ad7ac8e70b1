"""A full disk (issues 23 and "storage faults"): the write-ahead log refuses what it cannot write
with 503 and a retry delay (OTLP clients retry it), loses nothing it acknowledged, and takes
writes again by itself once space is freed: no restart. While it cannot write, /readyz is 503
and names the reason; a SIGTERM while the disk is still full exits cleanly (code 0, no panic)
and the next start has every acknowledged span exactly once.

The data directory sits on a small tmpfs the test mounts, so it needs root (as CI runs). The
write-ahead log gets 1 MiB segments ([wal] segment_bytes) so that an 8 MiB disk is enough."""

from __future__ import annotations

import itertools
import os
import subprocess
import time

import pytest
import requests

from mtlib import (
    check_stored_once,
    eventually,
    log_has_no_panic,
    new_trace_id,
    now_ns,
    post_otlp_json,
    request_json,
    span_json,
)

SERVICE = "disk"
SMALL_WAL = "[wal]\nsegment_bytes = 1048576\n"


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk_server(server_factory, small_disk, tmp_path):
    """make(**kw): a server whose data dir is on the small disk, with 1 MiB WAL segments (the
    config file itself lives off the small disk)."""
    config = tmp_path / "small-wal.toml"
    config.write_text(SMALL_WAL)

    def make(**kw):
        return server_factory("--config", str(config), data_dir=small_disk / "data", **kw)

    return make


class Batches:
    """100-span JSON requests with 400-byte payloads; span names say which request they came
    from ("req<i>-span<j>"), and the names of acknowledged requests are kept."""

    def __init__(self, server, n: int = 100) -> None:
        self.server = server
        self.n = n
        self.counter = itertools.count()
        self.acked: list[str] = []

    def post(self) -> requests.Response:
        i = next(self.counter)
        trace = new_trace_id().hex()
        t = now_ns()
        attrs = {"payload": "x" * 400}
        names = [f"req{i}-span{j}" for j in range(self.n)]
        spans = [
            span_json(trace, name, t + j, t + 1000 + j, attrs=attrs) for j, name in enumerate(names)
        ]
        r = post_otlp_json(self.server, request_json(SERVICE, spans))
        if r.status_code == 200:
            self.acked += names
        return r

    def until_refused(self, limit: int = 200) -> requests.Response:
        """Posts until a request is refused; returns the refusal."""
        for _ in range(limit):
            r = self.post()
            if r.status_code != 200:
                return r
        raise AssertionError(f"the disk never filled up ({len(self.acked)} spans acknowledged)")

    def accepted_again(self, timeout: float = 15) -> None:
        eventually(
            lambda: self.post().status_code == 200,
            timeout=timeout,
            what="a write after space was freed",
        )


def fill(disk, leave: int = 600_000):
    """Fills the disk but `leave` bytes with a file; returns its path."""
    free = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free.f_bavail * free.f_frsize - leave))
    return filler


def assert_refused_for_space(r: requests.Response) -> None:
    assert r.status_code == 503, f"{r.status_code}: {r.text[:500]}"
    assert int(r.headers["Retry-After"]) >= 1
    assert "No space left" in r.json()["error"]


def readyz(server) -> requests.Response:
    return requests.get(f"{server.query_url}/readyz", timeout=5)


def test_a_full_disk_answers_503_and_recovers_when_space_returns(small_disk_server, small_disk):
    server = small_disk_server()
    batches = Batches(server)
    filler = fill(small_disk)
    refused = batches.until_refused()
    assert batches.acked, "the first request was refused already"
    assert_refused_for_space(refused)
    # Space returns: the next request is taken without a restart.
    filler.unlink()
    batches.accepted_again()
    check_stored_once(server, batches.acked, f"service_name = '{SERVICE}'", "before restart")
    assert server.running
    assert server.stop() == 0
    server.start()
    check_stored_once(server, batches.acked, f"service_name = '{SERVICE}'", "after restart")


def test_readyz_names_a_full_disk_and_recovers_when_space_returns(small_disk_server, small_disk):
    # A long flush age: no segment flush runs during the test, so the write-ahead log is the
    # one thing that cannot write and /readyz must name its error.
    server = small_disk_server(flush_age="1h")
    r = readyz(server)
    assert (r.status_code, r.text) == (200, "ready\n")

    batches = Batches(server)
    filler = fill(small_disk)
    refused = batches.until_refused()
    assert batches.acked, "the first request was refused already"
    assert_refused_for_space(refused)

    def not_ready_for_space():
        r = readyz(server)
        assert r.status_code == 503, f"/readyz -> {r.status_code}: {r.text!r}"
        assert r.text.startswith("not ready:"), f"/readyz body {r.text!r}"
        assert "No space left on device" in r.text, f"/readyz names no reason: {r.text!r}"
        return r.text

    body = eventually(not_ready_for_space, timeout=5, what="/readyz 503 naming the full disk")
    print(f"/readyz while full: {body!r}")
    # Still not ready a little later: the disk is still full.
    time.sleep(2)
    not_ready_for_space()
    assert server.running

    filler.unlink()
    batches.accepted_again()

    def ready():
        r = readyz(server)
        assert (r.status_code, r.text) == (200, "ready\n"), f"/readyz {r.status_code}: {r.text!r}"
        return True

    eventually(ready, timeout=10, what="/readyz 200 after space was freed")
    check_stored_once(server, batches.acked, f"service_name = '{SERVICE}'")


def test_sigterm_while_the_disk_is_full_is_clean_and_loses_nothing(small_disk_server, small_disk):
    server = small_disk_server()
    batches = Batches(server)
    filler = fill(small_disk)
    refused = batches.until_refused()
    assert batches.acked, "the first request was refused already"
    assert_refused_for_space(refused)
    # Let a segment flush or two run into the full disk as well.
    time.sleep(2.5)
    assert server.running, f"the server died while the disk was full:\n{server.log_tail()}"

    code = server.stop()
    assert code == 0, f"exit code {code} after SIGTERM with a full disk:\n{server.log_tail()}"
    log_has_no_panic(server)

    filler.unlink()
    server.start()
    check_stored_once(
        server, batches.acked, f"service_name = '{SERVICE}'", "after the restart with space"
    )
    # The replayed log is flushed and a clean restart changes nothing.
    assert server.stop() == 0
    log_has_no_panic(server)
    server.start()
    check_stored_once(
        server, batches.acked, f"service_name = '{SERVICE}'", "after a clean restart"
    )
