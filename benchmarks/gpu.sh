#!/usr/bin/env bash
# The throughput table on one CUDA GPU (written for one H100; about 4 minutes):
# the seed's loop (ported to the GPU the obvious way: model and each batch .to(device)),
# ae-dist and the minimal hand-written loop, at batch 64 and at batch 4096, interleaved
# rounds as on the CPU; then ae-dist's GPU options at batch 4096 (bf16 autocast).
#
#   bash benchmarks/gpu.sh              # on the GPU machine, from anywhere
#   bash benchmarks/gpu.sh --dry-run    # the same commands on the CPU, tiny, to check the plumbing
#
# Python: $PYTHON, else the repository's .venv, else python3. Nothing is downloaded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3
fi

dry_run=0
case "${1:-}" in
  --dry-run) dry_run=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu.sh [--dry-run]" >&2; exit 2 ;;
esac

workdir=$(mktemp -d "${TMPDIR:-/tmp}/ae-dist-gpu-bench.XXXXXX")
trap 'rm -rf "$workdir"' EXIT

if (( dry_run )); then
  device=cpu
  small=(--steps 30 --warmup 10 --rounds 1)   # batch 64
  large=(--steps 6 --warmup 2 --rounds 1)     # batch 4096
  bf16=("${large[@]}")
  limits=(600 600 600)
else
  device=cuda
  "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: use --dry-run on a CPU")'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  small=(--steps 1500 --warmup 300 --rounds 3)  # batch 64: 1,500 steps = 1.6 epochs
  large=(--steps 100 --warmup 20 --rounds 3)    # batch 4096: the seed's loader turns 410k images per run
  bf16=(--steps 100 --warmup 20 --rounds 2)
  limits=(120 130 45)                           # seconds per table: the whole script stays under 5 minutes
fi

bench() {  # one table; past its limit the driver is interrupted and prints the rounds it finished
  local limit=$1; shift
  timeout --signal=INT --kill-after=10 "$limit" "$py" -m benchmarks.throughput --device "$device" \
    --workdir "$workdir" "$@" || echo "(exit $?)"
}

echo "== batch 64 =="
bench "${limits[0]}" --batch 64 "${small[@]}" --only seed,ae-dist,minimal
echo
echo "== batch 4096 =="
bench "${limits[1]}" --batch 4096 "${large[@]}" --only seed,ae-dist,minimal
echo
echo "== batch 4096, ae-dist with train.precision=bf16 (compare with ae-dist above) =="
bench "${limits[2]}" --batch 4096 "${bf16[@]}" --only ae-dist --ae-dist-args train.precision=bf16
