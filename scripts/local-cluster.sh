#!/usr/bin/env bash
# Starts the local cluster of the cluster test for a person to use (tests/local_cluster.py over
# tests/cluster_harness.py): replicas of `vcstream serve` behind HAProxy, with PostgreSQL, coturn and
# Prometheus, on loopback; prints the balancer and Prometheus URLs and runs until Ctrl-C.
# Needs root and scripts/setup.sh's packages. Example:
#   sudo scripts/local-cluster.sh --engine world --replicas 3 --places 2
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${VCSTREAM_PYTHON:-$root/.venv/bin/python}"
export PYTHONPATH="$root/src:$root/tests${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m local_cluster "$@"
