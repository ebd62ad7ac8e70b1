"""A full disk (issue 23): the write-ahead log refuses what it cannot write with 503 and a
retry delay (OTLP clients retry it), loses nothing it acknowledged, and takes writes again by
itself once space is freed: no restart.

The data directory sits on a small tmpfs the test mounts, so it needs root (as CI runs)."""

from __future__ import annotations

import os
import subprocess

import pytest

from mtlib import eventually, new_trace_id, now_ns, post_otlp_json, request_json, span_json


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def batch(n: int = 100) -> tuple[dict, int]:
    trace = new_trace_id().hex()
    t = now_ns()
    attrs = {"payload": "x" * 400}
    spans = [span_json(trace, f"op{i}", t + i, t + 1000 + i, attrs=attrs) for i in range(n)]
    return request_json("disk", spans), n


def test_a_full_disk_answers_503_and_recovers_when_space_returns(server_factory, small_disk):
    server = server_factory(data_dir=small_disk / "data")
    acknowledged = 0
    free = os.statvfs(small_disk)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free.f_bavail * free.f_frsize - 600_000))
    refused = None
    for _ in range(200):
        body, n = batch()
        r = post_otlp_json(server, body)
        if r.status_code == 200:
            acknowledged += n
            continue
        refused = r
        break
    assert refused is not None, "the disk never filled up"
    assert acknowledged > 0, "the first request was refused already"
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert "No space left" in refused.json()["error"]
    # Space returns: the next request is taken without a restart.
    filler.unlink()

    def accepted():
        body, n = batch()
        r = post_otlp_json(server, body)
        return n if r.status_code == 200 else None

    acknowledged += eventually(accepted, timeout=15, what="a write after space was freed")
    [[count]] = server.api.sql_rows("SELECT count(*) FROM spans")
    assert int(count) == acknowledged
    assert server.running
    server.stop()
    server.start()
    [[count]] = server.api.sql_rows("SELECT count(*) FROM spans")
    assert int(count) == acknowledged, "acknowledged spans lost across the restart"
