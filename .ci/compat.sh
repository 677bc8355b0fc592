#!/usr/bin/env bash
# The compatibility job: the oldest supported torch/torchvision (the floor in pyproject.toml) and
# the newest released, each installed from PyPI into a venv of its own, then a subset: the README
# quickstart (torchrun, 2 processes, 2 epochs) and the tests marked `compat` (world-size
# invariance, bitwise resume after kill -9, a 2-node submitit job on the local SLURM cluster,
# FashionMNIST files read through torchvision, the fused-Adam feature check and its fallback).
#
#   bash .ci/compat.sh                  # both pairs below, as CI runs it (as root, for SLURM)
#   bash .ci/compat.sh 2.15.0:0.29.2    # one torch:torchvision pair
#   AE_DIST_SLURM_LOCK=/tmp/ae-dist-slurm-tests.lock bash .ci/compat.sh   # its SLURM test under flock
#
# uv installs the venvs: about a minute each from PyPI, seconds from uv's cache (hardlinks). It
# reads no pip config, so a machine-wide pip constraint that caps torch does not apply, and the
# main .venv is not touched. Each venv (about 5 GB: CUDA builds, which run on the CPU) is removed
# after its run; uv's cache (~/.cache/uv) stays.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PAIRS=("$@")
[[ ${#PAIRS[@]} -gt 0 ]] || PAIRS=("2.13.0:0.28.0" "2.15.0:0.29.2")
WORK=${AE_DIST_COMPAT_DIR:-${TMPDIR:-/tmp}/ae-dist-compat}
PYTHON=${AE_DIST_COMPAT_PYTHON:-python3.11}
UV_VERSION=0.13.9
export UV_PYTHON_DOWNLOADS=never

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

UV=$WORK/uv/bin/uv
if [[ ! -x $UV ]] || [[ $("$UV" --version) != "uv $UV_VERSION"* ]]; then
  rm -rf "$WORK/uv" && mkdir -p "$WORK" && "$PYTHON" -m venv "$WORK/uv" &&
    PIP_CONFIG_FILE=/dev/null "$WORK/uv/bin/pip" install -q "uv==$UV_VERSION" || exit 1
fi

check_pair() {  # torch:torchvision -> a summary line in $SUMMARY; status 1 if anything failed
  local torch_version=${1%%:*} vision_version=${1#*:}
  local venv=$WORK/torch-$torch_version tmp=$WORK/run-$torch_version start=$SECONDS
  echo
  echo "== torch $torch_version, torchvision $vision_version"
  rm -rf "$venv" "$tmp" && mkdir -p "$tmp"
  if ! { "$UV" venv -q -p "$PYTHON" "$venv" &&
         "$UV" pip install --python "$venv/bin/python" "torch==$torch_version" "torchvision==$vision_version" \
           "${REQUIREMENTS[@]}" > "$tmp/install.log" 2>&1; }; then
    tail -n 30 "$tmp/install.log"; SUMMARY+=("torch $torch_version: install FAILED"); return 1
  fi
  local installed=$((SECONDS - start)) size
  size=$(du -sh "$venv" | cut -f1)
  grep -E '^(Resolved|Prepared|Installed) ' "$tmp/install.log" | paste -sd ';' | sed 's/;/; /g'
  echo "installed in ${installed} s, venv ${size}: $("$venv/bin/python" -c 'import numpy, torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {numpy.__version__}")')"

  local env_vars=(PYTHONPATH="$REPO" WANDB_MODE=offline WANDB_CONFIG_DIR="$tmp/wandb-home" WANDB_CACHE_DIR="$tmp/wandb-home"
                  WANDB_DATA_DIR="$tmp/wandb-home" AE_DIST_REQUIRE_SLURM=1)
  local t0=$SECONDS quickstart=FAILED tests_ok=1
  echo "-- quickstart: torchrun --standalone --nproc_per_node=2 -m ae_dist.train --config configs/digits.yaml train.epochs=2"
  env "${env_vars[@]}" "$venv/bin/torchrun" --standalone --nproc_per_node=2 -m ae_dist.train --config configs/digits.yaml \
    run.dir="$tmp/digits" train.epochs=2 run.progress=lines > "$tmp/quickstart.log" 2>&1
  local status=$?
  if [[ $status -eq 0 ]] && grep -q "^epoch 2/2" "$tmp/quickstart.log" && [[ -f $tmp/digits/model.pt ]]; then
    quickstart=ok; echo "$(grep "^epoch 2/2" "$tmp/quickstart.log") ($((SECONDS - t0)) s)"
  else
    echo "quickstart FAILED (exit $status):"; tail -n 40 "$tmp/quickstart.log"
  fi

  local t1=$SECONDS results=() part marker lock
  for part in "not slurm" "slurm"; do  # the SLURM test apart: only it needs AE_DIST_SLURM_LOCK
    marker="compat and $part" lock=()
    [[ $part == slurm && -n ${AE_DIST_SLURM_LOCK:-} ]] && lock=(flock "$AE_DIST_SLURM_LOCK")
    echo "-- pytest -m '$marker'"
    "${lock[@]}" env "${env_vars[@]}" "$venv/bin/python" -m pytest "${COMPAT_FILES[@]}" -m "$marker" -k "$ONLY" -q \
      -p no:cacheprovider --basetemp="$tmp/pytest-${part// /-}" 2>&1 | tee "$tmp/pytest.log" | grep -v '\[...%\]$'
    [[ ${PIPESTATUS[0]} -eq 0 ]] || tests_ok=0
    results+=("$(grep -E '^=* *[0-9]+ (passed|failed)' "$tmp/pytest.log" | tail -n 1 | tr -d '=' | sed -E 's/, [0-9]+ deselected//' | xargs)")
  done
  SUMMARY+=("torch $torch_version: install ${installed} s (${size}), quickstart $quickstart, tests: ${results[0]:-none ran} + ${results[1]:-none ran} ($((SECONDS - t1)) s); $((SECONDS - start)) s in all")
  rm -rf "$venv"
  [[ $quickstart == ok && $tests_ok == 1 ]]
}

for pair in "${PAIRS[@]}"; do
  [[ $pair == *:* ]] || { echo "error: '$pair' is not torch:torchvision (.ci/compat.sh): give e.g. 2.15.0:0.29.2" >&2; exit 2; }
done
SUMMARY=()
failed=0
for pair in "${PAIRS[@]}"; do
  check_pair "$pair" || failed=1
done
echo
echo "== compat summary ($SECONDS s)"
printf '%s\n' "${SUMMARY[@]}"
exit $failed
