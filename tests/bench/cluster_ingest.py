"""Cluster-mode ingest benchmark: the same `meshtrace bench ingest` load against a standalone
node, a one-node cluster and a three-node cluster on this machine, in one run, with the ratios
to the standalone node measured in the same run (these machines are noisy).

Not a test: run it by hand (docs/scaling.md records its results):

    cargo build --release
    ~/.cache/meshtrace/venv/bin/python tests/bench/cluster_ingest.py [--duration 10s] [--store s3|file]

It needs what the cluster tests need: PostgreSQL at 127.0.0.1:5432, NATS with JetStream at
127.0.0.1:4222, and for `--store s3` (the default) moto's S3 server from tests/requirements.txt.
Every node gets `--no-fsync`-free defaults; the load generator and the nodes share the machine.
It also prints the CPU each process group used per span (the nodes, nats-server, PostgreSQL
and moto, read from /proc before the load and a few seconds after it): the cost of each
component, from which docs/scaling.md sizes a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

import boto3  # noqa: E402
import requests  # noqa: E402

from conftest import PG_ADMIN, S3_CREDENTIALS, S3_REGION, delete_stream  # noqa: E402
from mtlib import Server, eventually, free_ports  # noqa: E402


def release_binary() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/meshtrace/target"))
    return Path(os.environ.get("MESHTRACE_BIN", f"{target}/release/meshtrace"))


class Moto:
    """moto's S3 server on a free port, with one bucket."""

    def __init__(self, workdir: Path) -> None:
        [port] = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        moto = Path(sys.executable).with_name("moto_server")
        self.log = open(workdir / "moto.log", "wb")
        self.proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=self.log, stderr=self.log
        )
        eventually(lambda: requests.get(self.url, timeout=2).ok, timeout=30, what="moto")
        self.bucket = f"bench-{uuid.uuid4().hex[:10]}"
        boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=S3_REGION,
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=self.bucket)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT": self.url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": S3_REGION,
            **S3_CREDENTIALS,
        }

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


WARMUP_S = 3
SETTLE_S = 4  # after the load: the last flushes and commits (flush age 2 s)


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds the processes used so far (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pids_of(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def bench(binary: Path, node: Server, duration: str, components: dict[str, list[int]]) -> dict:
    """One `bench ingest --target` run against `node`'s OTLP gRPC port, with the CPU each
    component (process group) used per span, load and the flushes after it included."""
    before = {name: cpu_seconds(pids) for name, pids in components.items()}
    out = subprocess.run(
        [str(binary), "bench", "ingest", "--target", node.grpc_target, "--duration", duration,
         "--warmup", f"{WARMUP_S}s", "--json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    time.sleep(SETTLE_S)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    seconds = float(duration.rstrip("s")) + WARMUP_S
    spans = result["spans_per_s"] * seconds  # the warm-up at the measured rate
    result["cpu_us_per_span"] = {
        name: (cpu_seconds(pids) - before[name]) * 1e6 / spans
        for name, pids in components.items()
    }
    return result


def run_cluster(binary, workdir, nodes: int, store: str, moto: Moto | None, duration) -> dict:
    name = f"bench{uuid.uuid4().hex[:8]}"
    db = f"meshtrace_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(PG_ADMIN + ["-c", f"CREATE DATABASE {db}"], check=True, capture_output=True)
    servers = []
    try:
        object_store = (
            f"s3://{moto.bucket}/{name}" if store == "s3" else f"file://{workdir}/{name}-objects"
        )
        for i in range(1, nodes + 1):
            s = Server(
                binary, workdir, "--cluster", name, "--node-id", f"n{i}",
                "--object-store", object_store, name=f"{name}-n{i}",
                catalog_url=f"postgres://postgres@127.0.0.1:5432/{db}", flush_age="2s",
                env=moto.env() if moto else {},
            )  # fmt: skip
            servers.append(s.start())
        components = {
            "meshtrace": [s.proc.pid for s in servers],
            "nats-server": pids_of("nats-server"),
            "postgres": pids_of("postgres"),
        }
        if moto:
            components["moto (S3)"] = [moto.proc.pid]
        return bench(binary, servers[0], duration, components)
    finally:
        for s in servers:
            s.close()
        for stream in (f"{name}_spans", f"KV_{name}_leases", f"KV_{name}_meta"):
            delete_stream(stream)
        subprocess.run(
            PG_ADMIN + ["-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", default="10s")
    p.add_argument("--store", choices=["s3", "file"], default="s3")
    args = p.parse_args()
    binary = release_binary()
    if not binary.is_file():
        sys.exit(f"{binary} not found: cargo build --release (or set MESHTRACE_BIN)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        moto = Moto(workdir) if args.store == "s3" else None
        try:
            standalone = Server(binary, workdir, name="standalone", flush_age="2s").start()
            try:
                node = {"meshtrace": [standalone.proc.pid]}
                results = {"standalone": bench(binary, standalone, args.duration, node)}
            finally:
                standalone.close()
            for n in (1, 3):
                results[f"{n}-node cluster"] = run_cluster(
                    binary, workdir, n, args.store, moto, args.duration
                )
        finally:
            if moto:
                moto.close()
    base = results["standalone"]["spans_per_s"]
    print(f"object store: {args.store}; load: bench ingest --duration {args.duration}")
    print(f"{'setup':<18} {'spans/s':>10} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for setup, r in results.items():
        print(
            f"{setup:<18} {r['spans_per_s']:>10.0f} {r['spans_per_s'] / base:>6.2f} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>7}"
        )
    print("\nCPU µs per span by process (load and the flushes after it; the load generator apart):")
    for setup, r in results.items():
        costs = ", ".join(f"{name} {us:.2f}" for name, us in r["cpu_us_per_span"].items())
        print(f"{setup:<18} {costs}")


if __name__ == "__main__":
    main()
