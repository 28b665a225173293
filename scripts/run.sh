#!/usr/bin/env bash
# Sets everything up (idempotent) and starts the main job: the vcstream server on port 8080
# (browser client at http://localhost:8080/). Without Seed-VC weights or a GPU it serves the CPU
# engine (WORLD) and says so in its log and in the page. Extra arguments go to `vcstream serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vcstream serve "$@"
