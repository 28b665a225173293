#!/usr/bin/env bash
# Builds the vcstream container image with podman, with no image registry: a Debian bookworm base made
# by debootstrap (imported once as localhost/debian:bookworm, then reused), then the Containerfile.
#
#   scripts/image.sh [podman build options...]      e.g. --build-arg DOWNLOAD_MODELS=1
#
# IMAGE (default localhost/vcstream:latest) names the result. The host's CA bundle and a wheelhouse
# (scripts/image-wheelhouse.sh: what the Containerfile installs, fetched by the host's own pip from
# its indexes; VCSTREAM_IMAGE_WHEELHOUSE, default ~/.cache/vcstream/wheelhouse) are mounted for the
# build only: the image keeps neither. Without a complete wheelhouse, or with TORCH_* build arguments
# (a CUDA torch), the build fetches from the network. pip's cache is a build volume (the host's
# ~/.cache/pip). Needs root, podman, runc and debootstrap (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/vcstream:latest}"
BASE=localhost/debian:bookworm

# runc (crun refuses this kernel's mixed cgroup layout) and ulimits within root's hard limits
if [ -z "${CONTAINERS_CONF:-}" ]; then
  CONTAINERS_CONF="${TMPDIR:-/tmp}/vcstream-containers.conf"
  nofile="$(ulimit -Hn)"
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n' \
    "$nofile" "$nofile" > "$CONTAINERS_CONF"
  export CONTAINERS_CONF
fi

debian_mirror() {
  # the first Debian mirror apt uses here (deb822 "URIs:" or one-line "deb URL bookworm ...")
  local found
  found="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit} /^deb / && $3 == "bookworm" {print $2; exit}')"
  echo "${found:-http://deb.debian.org/debian}"
}

if ! podman image exists "$BASE"; then
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  mirror="$(debian_mirror)"
  echo "image: debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# docker format: the OCI format has no HEALTHCHECK (podman would drop it)
build=(--format docker --file Containerfile --tag "$IMAGE")
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
  build+=(--volume "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
wheelhouse="${VCSTREAM_IMAGE_WHEELHOUSE:-$HOME/.cache/vcstream/wheelhouse}"
if [[ " $* " == *TORCH_* ]]; then
  echo "image: TORCH_* build arguments given: torch and the rest come from the network"
elif bash scripts/image-wheelhouse.sh "$wheelhouse"; then
  build+=(--volume "$wheelhouse:/run/wheelhouse:ro" --build-arg PIP_WHEELHOUSE=/run/wheelhouse)
else
  echo "image: the host's pip could not fill the wheelhouse; the build fetches from the network" >&2
fi
# the host's own pip cache by default: wheels scripts/setup.sh fetched are not fetched again
pip_cache="${VCSTREAM_IMAGE_PIP_CACHE:-$HOME/.cache/pip}"
mkdir -p "$pip_cache"
build+=(--volume "$pip_cache:/root/.cache/pip")

podman build "${build[@]}" "$@" .
