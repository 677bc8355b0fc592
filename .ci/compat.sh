#!/usr/bin/env bash
# The compatibility job: the oldest supported torch/torchvision (the floor in pyproject.toml) and
# the newest released, each installed with pip into a venv of its own, then a short subset: the
# README quickstart (torchrun, 2 processes, 2 epochs) and the tests marked `compat` (world-size
# invariance, bitwise resume after kill -9, a 2-node submitit job on the local SLURM cluster,
# FashionMNIST files read through torchvision, the fused-Adam feature check and its fallback).
#
#   bash .ci/compat.sh                     # install both pairs below, then test them (as root, for SLURM)
#   bash .ci/compat.sh install             # the venvs only (CI does this while the main suite runs)
#   bash .ci/compat.sh test                # the subset, in the venvs that install made
#   bash .ci/compat.sh all 2.15.0:0.29.2   # one torch:torchvision pair
#
# pip reads the machine's pip configuration (its local wheel folders and indexes) but not its
# constraint file, which may cap torch below the newest release; `===` asks for the exact release,
# so that a local CPU-only file (2.13.0+cpu) cannot stand in for the PyPI build that PyPI's
# torchvision needs. The releases
# on PyPI are CUDA builds (about 5 GB a venv), which run on the CPU; each venv is removed after
# its test. The main .venv is not touched.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PHASE=${1:-all}
shift || true
PAIRS=("$@")
[[ ${#PAIRS[@]} -gt 0 ]] || PAIRS=("2.13.0:0.28.0" "2.15.0:0.29.2")
WORK=${AE_DIST_COMPAT_DIR:-${TMPDIR:-/tmp}/ae-dist-compat}
PYTHON=${AE_DIST_COMPAT_PYTHON:-python3.11}
case $PHASE in install|test|all) ;; *) echo "error: unknown phase '$PHASE' (.ci/compat.sh): use install, test or all" >&2; exit 2;; esac
for pair in "${PAIRS[@]}"; do
  [[ $pair == *:* ]] || { echo "error: '$pair' is not torch:torchvision (.ci/compat.sh): give e.g. 2.15.0:0.29.2" >&2; exit 2; }
done

# The project's requirements but torch and torchvision, plus the test tools (not ruff).
mapfile -t REQUIREMENTS < <("$PYTHON" - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
    if re.match(r"(torch|torchvision|ruff)\b", requirement) is None:
        print(requirement)
EOF
)

# Of the kill -9 test, the 1-process run: the 2-process one repeats it under torchrun (the main suite runs both).
ONLY="not killed_three_times_then_rerun_matches_the_uninterrupted_run[2]"

install_pair() {  # torch:torchvision -> $WORK/torch-VERSION, and its install.log; status 1 if pip failed
  local torch_version=${1%%:*} vision_version=${1#*:}
  local venv=$WORK/torch-$torch_version log=$WORK/install-$torch_version.log start=$SECONDS
  rm -rf "$venv" && mkdir -p "$WORK"
  if ! { "$PYTHON" -m venv "$venv" &&
         PIP_CONSTRAINT=/dev/null "$venv/bin/pip" install -q --no-input \
           "torch===$torch_version" "torchvision===$vision_version" "${REQUIREMENTS[@]}" > "$log" 2>&1; }; then
    echo "torch $torch_version: install FAILED"; tail -n 30 "$log"; rm -rf "$venv"; return 1
  fi
  echo "torch $torch_version: installed in $((SECONDS - start)) s, venv $(du -sh "$venv" | cut -f1): $("$venv/bin/python" -c '
import numpy, torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {numpy.__version__}")' 2>&1 | tail -n 1)" |
    tee "$WORK/installed-$torch_version.txt"
}

test_pair() {  # torch:torchvision -> a summary line in $SUMMARY; status 1 if anything failed
  local torch_version=${1%%:*}
  local venv=$WORK/torch-$torch_version tmp=$WORK/run-$torch_version start=$SECONDS
  echo
  echo "== $(cat "$WORK/installed-$torch_version.txt" 2>/dev/null || echo "torch $torch_version: not installed")"
  if [[ ! -x $venv/bin/python ]]; then
    SUMMARY+=("torch $torch_version: not installed (see the install lines above)"); return 1
  fi
  rm -rf "$tmp" && mkdir -p "$tmp"
  local env_vars=(PYTHONPATH="$REPO" WANDB_MODE=offline WANDB_CONFIG_DIR="$tmp/wandb-home" WANDB_CACHE_DIR="$tmp/wandb-home"
                  WANDB_DATA_DIR="$tmp/wandb-home" AE_DIST_REQUIRE_SLURM=1)
  local quickstart=FAILED tests=FAILED
  echo "-- quickstart: torchrun --standalone --nproc_per_node=2 -m ae_dist.train --config configs/digits.yaml train.epochs=2"
  env "${env_vars[@]}" "$venv/bin/torchrun" --standalone --nproc_per_node=2 -m ae_dist.train --config configs/digits.yaml \
    run.dir="$tmp/digits" train.epochs=2 run.progress=lines > "$tmp/quickstart.log" 2>&1
  local status=$?
  if [[ $status -eq 0 ]] && grep -q "^epoch 2/2" "$tmp/quickstart.log" && [[ -f $tmp/digits/model.pt ]]; then
    quickstart=ok; grep "^epoch 2/2" "$tmp/quickstart.log"
  else
    echo "quickstart FAILED (exit $status):"; tail -n 40 "$tmp/quickstart.log"
  fi
  local files
  mapfile -t files < <(grep -l '^@pytest.mark.compat' tests/test_*.py)
  echo "-- pytest -m compat (${files[*]})"
  env "${env_vars[@]}" "$venv/bin/python" -m pytest "${files[@]}" -m compat -k "$ONLY" -q -n 2 --dist loadgroup -p no:cacheprovider \
    --basetemp="$tmp/pytest" > "$tmp/pytest.log" 2>&1
  status=$?
  grep -v '\[...%\]$' "$tmp/pytest.log" | tail -n 40
  [[ $status -eq 0 ]] && tests=ok
  local figures
  figures=$(grep -E '[0-9]+ (passed|failed)' "$tmp/pytest.log" | tail -n 1 | tr -d '=' | sed -E 's/, [0-9]+ deselected//' | xargs)
  SUMMARY+=("torch $torch_version: quickstart $quickstart, compat tests $tests ($figures); $((SECONDS - start)) s")
  rm -rf "$venv"
  [[ $quickstart == ok && $tests == ok ]]
}

failed=0
if [[ $PHASE != test ]]; then
  for pair in "${PAIRS[@]}"; do
    install_pair "$pair" || failed=1
  done
fi
if [[ $PHASE != install ]]; then
  SUMMARY=()
  for pair in "${PAIRS[@]}"; do
    test_pair "$pair" || failed=1
  done
  echo
  echo "== compatibility summary"
  printf '%s\n' "${SUMMARY[@]}"
fi
exit $failed
