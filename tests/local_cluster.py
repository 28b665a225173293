"""The local cluster of tests/cluster_harness.py, started by a person (scripts/local-cluster.sh):
N ``vcstream serve`` replicas, HAProxy, PostgreSQL, coturn and Prometheus on loopback, run until
Ctrl-C (or SIGTERM), then all stopped and their temporary folders removed. Needs root, as the
cluster test does (PostgreSQL runs as the postgres user, coturn binds the interface address)."""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType

from cluster_harness import Cluster, running_cluster
from postgres_harness import created_database, running_postgres


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/local-cluster.sh", description=__doc__)
    parser.add_argument("--engine", choices=("world", "passthrough"), default="world")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument(
        "--places",
        type=int,
        default=2,
        help="call places per replica (VCSTREAM_MAX_SESSIONS and HAProxy maxconn)",
    )
    parser.add_argument("--grace", type=float, default=5.0, help="drain grace of each replica, seconds")
    parser.add_argument("--state-file", type=Path, default=None, help="also write the URLs and PIDs as JSON")
    return parser.parse_args(argv)


def describe(cluster: Cluster, engine: str) -> dict[str, object]:
    return {
        "engine": engine,
        "places_per_replica": cluster.capacity,
        "balancer": cluster.balancer.base,
        "prometheus": cluster.prometheus.base,
        "turn": cluster.coturn.url,
        "replicas": {
            r.name: {"url": r.base, "pid": r.process.pid if r.process else None, "log": str(r.log)}
            for r in cluster.replicas
        },
    }


def bench_command(state: dict[str, object]) -> str:
    replicas = state["replicas"]
    assert isinstance(replicas, dict)
    pids = " ".join(f"--server-pid {r['pid']}" for r in replicas.values())
    return f"vcstream bench load --url {state['balancer']} --calls N --ramp S {pids}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stopping = threading.Event()
    with (
        tempfile.TemporaryDirectory(prefix="vcstream-cluster-") as folder,
        running_postgres() as postgres,
        created_database(postgres, "cluster") as database,
        running_cluster(
            Path(folder), database, replicas=args.replicas, capacity=args.places, grace_s=args.grace,
            engine=args.engine,
        ) as cluster,
    ):  # fmt: skip

        def stop(signum: int, _frame: FrameType | None) -> None:
            stopping.set()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        state = describe(cluster, args.engine)
        if args.state_file is not None:
            args.state_file.write_text(json.dumps(state, indent=1) + "\n")
        print(f"balancer   {cluster.balancer.base}  (pages, /ws, /api)", flush=True)
        print(f"prometheus {cluster.prometheus.base}", flush=True)
        for replica in cluster.replicas:
            pid = replica.process.pid if replica.process else "?"
            print(f"replica    {replica.name} {replica.base} pid {pid} log {replica.log}", flush=True)
        print(f"load:      {bench_command(state)}", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        while not stopping.wait(1.0):
            gone = [r.name for r in cluster.replicas if not r.alive]
            if gone:  # the harness restarts nothing on its own: say so and stop
                print(f"replica(s) {', '.join(gone)} exited; stopping the cluster", flush=True)
                return 1
    print("cluster stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
