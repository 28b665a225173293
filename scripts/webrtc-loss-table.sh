#!/usr/bin/env bash
# The before/after table of WebRTC calls at 0, 5, 10 and 20 % packet loss each way (markdown on stdout):
# frames too quiet, envelope correlation, latency p95 and connection time, for calls without FEC, NACK
# and RED and with webrtcbin's own handshake ("before") and with them ("after"). Needs root (network namespaces)
# and nftables, like the loss tests. Options go to tests/webrtc_loss_table.py (--losses, --seconds;
# --chromium [--legs both,up,down]: headless Chromium on the page as the caller, with its own figures).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${VCSTREAM_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" exec "$python" "$root/tests/webrtc_loss_table.py" "$@"
