#!/usr/bin/env bash
# Sets everything up (idempotent) and runs the main job. For now that is a file conversion on the CPU
# engine (WORLD, no weights, no hub): synthetic speech of one flite voice converted toward another.
# Pass your own files instead: scripts/run.sh SOURCE REFERENCE [OUTPUT] [extra vcstream convert flags]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
if [ $# -ge 2 ]; then
  src=$1 ref=$2 dst=${3:-out/converted.wav}
  shift $(($# < 3 ? $# : 3))
else
  src=out/demo-source.wav ref=out/demo-reference.wav dst=out/converted.wav
  flite -voice slt -t "Hello, this is my own voice, converted in real time into somebody else's." -o "$src"
  flite -voice awb -t "A rainbow is a division of white light into many beautiful colors." -o "$ref"
fi
exec .venv/bin/vcstream convert "$src" --reference "$ref" -o "$dst" --engine world "$@"
