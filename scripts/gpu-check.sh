#!/usr/bin/env bash
# The GPU figures in one go, on a CUDA host with the project set up (scripts/setup.sh): Seed-VC ms per
# block in fp32 and bf16, sessions per GPU batched and unbatched, and how far bf16/fp16 move the output
# from fp32. Installs the CUDA build of torch into .venv first if the venv has a CPU-only build. Each
# step has a time limit (together 450 s, so the whole run stays under 8 minutes); a summary table comes
# at the end and every step's full output is kept under $GPU_CHECK_LOGS (default: a new folder in /tmp).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PY=.venv/bin/python
LOGS="${GPU_CHECK_LOGS:-$(mktemp -d /tmp/vcstream-gpu-check.XXXXXX)}"
mkdir -p "$LOGS"
# the torch version setup.sh pins (a CUDA build of the same version replaces the CPU one)
TORCH_PIN="$(grep -o 'torch==[0-9][0-9.]*' scripts/setup.sh | head -n 1)"

names=()
results=()

# step NAME LIMIT_S COMMAND...: run with a time limit, log its output, record status and seconds
step() {
  local name=$1 limit=$2
  shift 2
  local log="$LOGS/$name.log" started=$SECONDS rc=0
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
  local took=$((SECONDS - started)) status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="TIMEOUT"
  elif [ "$rc" -ne 0 ]; then
    status="FAILED rc=$rc"
  fi
  tail -n 25 "$log"
  names+=("$name")
  results+=("$(printf '%-14s %4ss' "$status" "$took")")
}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi missing or failing)" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ ! -x "$PY" ]; then
  echo "gpu-check: $PY is missing: run scripts/setup.sh first" >&2
  exit 1
fi

cuda_ready() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if ! cuda_ready; then
  # PyPI's Linux x86_64 wheel of torch is the CUDA build; the installed CPU build (+cpu) would
  # satisfy the pin, so it goes first.
  step install-torch 140 bash -c "$PY -m pip uninstall -q -y torch && $PY -m pip install -q '$TORCH_PIN'"
  if ! cuda_ready; then
    echo "gpu-check: torch still sees no CUDA device after installing $TORCH_PIN" >&2
    exit 1
  fi
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'

VC=("$PY" -m vcstream.cli)
step engines 70 "${VC[@]}" bench engines --engines seedvc --device cuda --dtypes fp32,bf16
# batched and unbatched in one run (each mode stops at its first N that misses real time); the
# last line compares them
step capacity 185 "${VC[@]}" bench capacity --engine seedvc --device cuda --dtype bf16 \
  --random-weights --sessions 1,4,8,12,16,32,64,100,128 --seconds 6
step precision 55 "${VC[@]}" bench precision --device cuda

echo
echo "== summary (total ${SECONDS}s; logs in $LOGS)"
printf '%-20s %-14s %5s\n' step status time
for i in "${!names[@]}"; do
  printf '%-20s %s\n' "${names[$i]}" "${results[$i]}"
done
for name in "${names[@]}"; do
  case $name in
    install-torch) continue ;;
  esac
  echo
  echo "-- $name"
  # the figures each command prints: its table rows (lines with numbers and columns), not the logs
  grep -Ev '^[0-9]{4}-[0-9]{2}-[0-9]{2} |Warning|warn\(' "$LOGS/$name.log" | tail -n 20
done
failed=0
for r in "${results[@]}"; do
  case $r in
    ok*) ;;
    *) failed=1 ;;
  esac
done
exit "$failed"
