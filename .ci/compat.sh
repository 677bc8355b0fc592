#!/usr/bin/env bash
# The compatibility job: the oldest supported torch/torchvision (the floor in pyproject.toml) and
# the newest torch released, each installed from PyPI into a venv of its own, then a subset:
# the README quickstart (torchrun, 2 processes, 2 epochs) and the tests marked `compat`
# (world-size invariance, bitwise resume after kill -9, a 2-node sbatch job on the local SLURM
# cluster, the fused-Adam feature check and its fallback).
#
#   bash .ci/compat.sh                  # both pairs below, as CI runs it (as root, for SLURM)
#   bash .ci/compat.sh 2.15.0           # one torch release, without torchvision
#   bash .ci/compat.sh 2.3.0:0.18.0     # torch:torchvision
#   AE_DIST_SLURM_LOCK=/tmp/ae-dist-slurm-tests.lock bash .ci/compat.sh   # the tests step under flock
#
# torch 2.15.0 runs without torchvision: no torchvision for it is released yet, and the subset
# reads scikit-learn's digits, which need none (torchvision is imported for FashionMNIST/MNIST only).
# The venvs' pip reads no pip config file (PIP_CONFIG_FILE=/dev/null), so a machine-wide pip
# constraint that caps torch does not apply to them; the main .venv is not touched. Each venv
# (about 5 GB: CUDA builds, which run on the CPU) is removed after its run; pip's download cache stays.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PAIRS=("$@")
[[ ${#PAIRS[@]} -gt 0 ]] || PAIRS=("2.3.0:0.18.0" "2.15.0")
WORK=${AE_DIST_COMPAT_DIR:-${TMPDIR:-/tmp}/ae-dist-compat}
PYTHON=${AE_DIST_COMPAT_PYTHON:-python3.11}

# The project's requirements but torch and torchvision, plus the test tools (not ruff).
mapfile -t REQUIREMENTS < <("$PYTHON" - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
    if re.match(r"(torch|torchvision|ruff)\b", requirement) is None:
        print(requirement)
EOF
)

# The test files that hold tests marked compat (collecting only these is faster than all of tests/).
mapfile -t COMPAT_FILES < <(grep -l '^@pytest.mark.compat' tests/test_*.py)

# Of the kill -9 test, the 1-process run: the 2-process one repeats it under torchrun (the main suite runs both).
ONLY="not killed_three_times_then_rerun_matches_the_uninterrupted_run[2]"

pip_fresh() {  # pip in venv $1, free of this machine's pip config (its torch cap, its local indexes)
  local venv=$1; shift
  env -u PIP_CONSTRAINT -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "$venv/bin/pip" install -q --disable-pip-version-check --no-compile "$@"
}

check_pair() {  # torch[:torchvision] -> a summary line in $SUMMARY; status 1 if anything failed
  local torch_version=${1%%:*} vision_version=""
  [[ $1 == *:* ]] && vision_version=${1#*:}
  local venv=$WORK/torch-$torch_version tmp=$WORK/run-$torch_version start=$SECONDS
  echo
  echo "== torch $torch_version${vision_version:+, torchvision $vision_version}${vision_version:- (no torchvision)}"
  rm -rf "$venv" "$tmp" && mkdir -p "$tmp"
  local requested=("torch==$torch_version")
  [[ -n $vision_version ]] && requested+=("torchvision==$vision_version")
  if ! { "$PYTHON" -m venv "$venv" && pip_fresh "$venv" "${requested[@]}" "${REQUIREMENTS[@]}"; }; then
    SUMMARY+=("torch $torch_version: install FAILED"); return 1
  fi
  local installed=$((SECONDS - start)) size
  size=$(du -sh "$venv" | cut -f1)
  echo "installed in ${installed} s, venv ${size}: $("$venv/bin/python" - <<'EOF'
import importlib.metadata as metadata
import torch
found = {d.name for d in metadata.distributions()}
print(", ".join([f"torch {torch.__version__}"] + [f"{n} {metadata.version(n)}" for n in ("torchvision", "numpy") if n in found]))
EOF
)"

  local env_vars=(PYTHONPATH="$REPO" WANDB_MODE=offline WANDB_CONFIG_DIR="$tmp/wandb-home" WANDB_CACHE_DIR="$tmp/wandb-home"
                  WANDB_DATA_DIR="$tmp/wandb-home" AE_DIST_REQUIRE_SLURM=1)
  local t0=$SECONDS quickstart_ok=0 tests_ok=0
  echo "-- quickstart: torchrun --standalone --nproc_per_node=2 -m ae_dist.train --config configs/digits.yaml train.epochs=2"
  env "${env_vars[@]}" "$venv/bin/torchrun" --standalone --nproc_per_node=2 -m ae_dist.train --config configs/digits.yaml \
    run.dir="$tmp/digits" train.epochs=2 run.progress=lines > "$tmp/quickstart.log" 2>&1
  local status=$?
  if [[ $status -eq 0 ]] && grep -q "^epoch 2/2" "$tmp/quickstart.log" && [[ -f $tmp/digits/model.pt ]]; then
    quickstart_ok=1; grep "^epoch 2/2" "$tmp/quickstart.log"; echo "quickstart: $((SECONDS - t0)) s"
  else
    echo "quickstart FAILED (exit $status):"; tail -n 40 "$tmp/quickstart.log"
  fi

  local t1=$SECONDS
  echo "-- pytest -m compat"
  ${AE_DIST_SLURM_LOCK:+flock "$AE_DIST_SLURM_LOCK"} env "${env_vars[@]}" "$venv/bin/python" -m pytest "${COMPAT_FILES[@]}" -m compat -k "$ONLY" -q -p no:cacheprovider \
    --basetemp="$tmp/pytest" 2>&1 | tee "$tmp/pytest.log" | grep -v '^\.*\s*\[...%\]$'
  [[ ${PIPESTATUS[0]} -eq 0 ]] && tests_ok=1
  local result
  result=$(grep -E '^=* *[0-9]+ (passed|failed)' "$tmp/pytest.log" | tail -n 1 | tr -d '=' | xargs)
  local quickstart=FAILED
  [[ $quickstart_ok == 1 ]] && quickstart=ok
  SUMMARY+=("torch $torch_version: install ${installed} s (${size}), quickstart $quickstart, tests ${result:-did not run} ($((SECONDS - t1)) s); $((SECONDS - start)) s in all")
  rm -rf "$venv"
  [[ $quickstart_ok == 1 && $tests_ok == 1 ]]
}

SUMMARY=()
failed=0
for pair in "${PAIRS[@]}"; do
  check_pair "$pair" || failed=1
done
echo
echo "== compat summary ($SECONDS s)"
printf '%s\n' "${SUMMARY[@]}"
exit $failed
