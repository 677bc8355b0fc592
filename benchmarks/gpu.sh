#!/usr/bin/env bash
# The GPU check on one node with one or more CUDA GPUs, in under 5 minutes, then one summary line per check:
#
#   quickstart   torchrun --nproc_per_node=<GPUs> -m ae_dist.train on cuda (nccl when 2 or more)
#   resume       kill -9 after the first checkpoint, rerun: model.pt bitwise equal to an uninterrupted run
#                (train.deterministic=true: deterministic algorithms, CUBLAS_WORKSPACE_CONFIG)
#   bf16         train.precision=bf16 trains to the end with a finite loss
#   compile      train.compile=reduce-overhead (CUDA graphs) trains to the end
#   silent-rank  (2 or more GPUs) SIGSTOP to rank 1: rank 0 names it in one line, exit 1, stacks in incidents/
#                (the heartbeat thread's watchdog: NCCL itself does not raise); NCCL's flight-recorder dump there too
#   speed        the throughput table against the seed's loop on the same GPU (benchmarks/throughput.py)
#
#   bash benchmarks/gpu.sh              # on the GPU machine, from anywhere
#   bash benchmarks/gpu.sh --dry-run    # the same on the CPU, tiny: says what it skips for lack of a GPU
#
# It runs from the source tree (PYTHONPATH), with whatever torch the machine has (an older one, another Python);
# wandb and submitit are not needed (wandb.mode=disabled). A package the trainer needs and the machine lacks
# (pyyaml, tqdm, matplotlib, scikit-learn, numpy) is installed from wheels in $WHEELS (pip --no-index), if given.
# Python: $PYTHON, else the repository's .venv, else python3. Nothing is downloaded.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

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

workdir=$(mktemp -d "${TMPDIR:-/tmp}/ae-dist-gpu-check.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled PYTHONUNBUFFERED=1
summary=()
say() { summary+=("$1"); echo "== $1"; }

missing=$("$py" - <<'EOF'
import importlib.util
print(" ".join(name for name, module in [("pyyaml", "yaml"), ("tqdm", "tqdm"), ("matplotlib", "matplotlib"),
                                          ("scikit-learn", "sklearn"), ("numpy", "numpy")]
               if importlib.util.find_spec(module) is None))
EOF
)
if [[ -n "$missing" ]]; then
  if [[ -n "${WHEELS:-}" ]]; then
    "$py" -m pip install --quiet --no-index --find-links "$WHEELS" --target "$workdir/site" $missing \
      && export PYTHONPATH="$PYTHONPATH:$workdir/site"
  else
    echo "missing packages: $missing (set WHEELS to a folder of their wheels)" >&2; exit 2
  fi
fi
"$py" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"cuda {torch.version.cuda}, {torch.cuda.device_count()} device(s)")'

gpus=$("$py" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if (( gpus == 0 )); then
  if (( ! dry_run )); then echo "no CUDA device: use --dry-run on a CPU" >&2; exit 2; fi
  device=cpu; nproc=2; epochs=2
else
  device=cuda; nproc=$gpus; epochs=3
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
common=(--config digits "train.epochs=$epochs" train.log_every=5 checkpoint.every_steps=10 run.progress=off
        wandb.mode=disabled "train.device=$device")

train() {  # train LIMIT NAME NPROC ARGS...: one run, its output in $workdir/NAME.log; its exit status
  local limit=$1 name=$2 n=$3; shift 3
  if (( n > 1 )); then
    timeout --kill-after=10 "$limit" "$py" -m torch.distributed.run --standalone --nproc_per_node="$n" -m ae_dist.train \
      "${common[@]}" "run.dir=$workdir/$name" "$@" >"$workdir/$name.log" 2>&1
  else
    timeout --kill-after=10 "$limit" "$py" -m ae_dist.train "${common[@]}" "run.dir=$workdir/$name" "$@" \
      >"$workdir/$name.log" 2>&1
  fi
}
same_weights() { "$py" -c 'import sys, torch
a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in sys.argv[1:])
sys.exit(0 if list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a) else 1)' "$1/model.pt" "$2/model.pt"; }
last_loss() { grep -o 'loss: [0-9.naif]*' "$1" | tail -1; }

# quickstart
started=$SECONDS
if train 120 quick "$nproc"; then say "quickstart: ok, $nproc rank(s) on $device in $((SECONDS - started)) s, $(last_loss "$workdir/quick.log")"
else say "quickstart: FAILED (exit $?), see the log above"; tail -20 "$workdir/quick.log"; fi

# kill -9 and bitwise resume
train 120 reference 1 train.deterministic=true
( "$py" -m ae_dist.train "${common[@]}" "run.dir=$workdir/killed" train.deterministic=true >"$workdir/killed.log" 2>&1 & pid=$!
  for _ in $(seq 600); do ls "$workdir/killed/checkpoints/"step_*.pt >/dev/null 2>&1 && break; sleep 0.1; done
  kill -9 "$pid"; wait "$pid" 2>/dev/null ) ; true
if train 120 killed 1 train.deterministic=true && same_weights "$workdir/reference" "$workdir/killed"; then
  say "resume: ok, kill -9 after checkpoint $(ls "$workdir/killed/checkpoints" | head -1), the rerun bitwise equal"
else say "resume: FAILED: model.pt differs from the uninterrupted run's (or a run failed)"; fi

# bf16
if train 120 bf16 1 train.precision=bf16 && grep -q 'done:' "$workdir/bf16.log"; then
  say "bf16: ok, $(last_loss "$workdir/bf16.log")"
else say "bf16: FAILED"; tail -5 "$workdir/bf16.log"; fi

# compile
if [[ $device == cpu ]]; then say "compile: skipped (no GPU: torch.compile of reduce-overhead takes minutes on a CPU)"
elif train 150 compile 1 train.compile=reduce-overhead && grep -q 'done:' "$workdir/compile.log"; then
  say "compile: ok, reduce-overhead, $(last_loss "$workdir/compile.log")"
else say "compile: FAILED"; tail -5 "$workdir/compile.log"; fi

# a SIGSTOPped rank is named
if [[ $device == cuda ]] && (( gpus < 2 )); then say "silent-rank: skipped (one GPU: needs 2 ranks)"
else
  ( "$py" -m torch.distributed.run --standalone --nproc_per_node=2 -m ae_dist.train "${common[@]}" train.epochs=30 \
      dist.timeout_s=10 "run.dir=$workdir/stopped" >"$workdir/stopped.log" 2>&1 & agent=$!
    for _ in $(seq 900); do grep -q 'step 20/' "$workdir/stopped.log" 2>/dev/null && break; sleep 0.1; done
    rank1=$(pgrep -P "$agent" | while read -r p; do grep -qz '^RANK=1$' "/proc/$p/environ" && echo "$p"; done | head -1)
    [[ -n "$rank1" ]] && kill -STOP "$rank1"
    timeout 90 tail --pid="$agent" -f /dev/null; kill -CONT "$rank1" 2>/dev/null; kill "$agent" 2>/dev/null; true )
  line=$(grep -m1 '^error: rank 1 on ' "$workdir/stopped.log")
  traces=$(ls "$workdir/stopped/incidents" 2>/dev/null | grep -c 'nccl-trace')
  if [[ -n "$line" ]] && ls "$workdir/stopped/incidents/"*-rank0-*.txt >/dev/null 2>&1; then
    say "silent-rank: ok, rank 0 said: ${line:0:160}...; stacks in incidents/, $traces NCCL trace file(s)"
  else say "silent-rank: FAILED: no line naming rank 1 (or no stacks)"; tail -5 "$workdir/stopped.log"; fi
fi

# the speed table
if (( dry_run )); then small=(--steps 30 --warmup 10 --rounds 1); large=(--steps 6 --warmup 2 --rounds 1); limits=(100 100)
else small=(--steps 1500 --warmup 300 --rounds 2); large=(--steps 100 --warmup 20 --rounds 2); limits=(50 40)
fi
bench() {  # one table; past its limit the driver is interrupted and prints the rounds it finished
  local limit=$1; shift
  timeout --signal=INT --kill-after=10 "$limit" "$py" -m benchmarks.throughput --device "$device" \
    --workdir "$workdir/bench" "$@" || echo "(exit $?)"
}
echo "== batch 64 =="
bench "${limits[0]}" --batch 64 "${small[@]}" --only seed,ae-dist,minimal | tee "$workdir/speed.txt"
echo "== batch 4096 =="
bench "${limits[1]}" --batch 4096 "${large[@]}" --only seed,ae-dist,minimal | tee -a "$workdir/speed.txt"
say "speed: $(grep -c . "$workdir/speed.txt") lines above (seed, ae-dist, minimal at batch 64 and 4096)"

echo
echo "== summary ($device, $((SECONDS)) s)"
printf '%s\n' "${summary[@]}"
