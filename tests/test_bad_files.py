"""Hostile and unlucky files (issue 11): an alias bomb, repeated keys, broken run folders, run.dir=~/x.

Each ends with one `error:` line and exit 2, never a traceback. The alias bomb (a few hundred
bytes of nested YAML aliases that expand to ~400 million items) is refused by every entry point
that reads a config within 5 s and without taking 200 MB more than the same command refusing
an ordinary bad value: each command's own time and peak RSS (RUSAGE_CHILDREN of a small parent) are measured.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ae_dist.config import ModelConfig, dump_yaml, load_config
from ae_dist.models import build_model
from tests.helpers.commands import PYTHON, REPO, clean_env, run_module
from tests.helpers.faults import report

LEVELS = "abcdefghi"
BOMB_HEAD = "".join(f"{name}: &{name} [{','.join(['1'] * 9) if not i else ','.join([f'*{LEVELS[i - 1]}'] * 9)}]\n"
                    for i, name in enumerate(LEVELS))
FIELDS = {"int": "train:\n  epochs: *i\n", "bool": "data:\n  download: *i\n", "float": "optim:\n  lr: *i\n",
          "list": "model:\n  hidden: *i\n"}
ORDINARY = "train:\n  epochs: three\n"
SECONDS, EXTRA_MB = 5.0, 200


def entry(module: str, config: Path) -> list[str]:
    """The command that reads ``config``: train and launch as --config, evaluate as a run folder's config.yaml."""
    if module == "ae_dist.evaluate":
        run = config.with_suffix("")
        run.mkdir(exist_ok=True)
        (run / "config.yaml").write_bytes(config.read_bytes())
        return [PYTHON, "-m", module, str(run)]
    if module == "launch":
        return [PYTHON, "-m", module, "--config", str(config), "--executor", "local"]
    return [PYTHON, "-m", module, "--config", str(config)]


# Runs the command from a small process, so that the child's peak RSS is its own, not a copy of pytest's.
MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
try:
    result = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=30)
except subprocess.TimeoutExpired:  # killed: a bomb that went off
    result = subprocess.CompletedProcess(sys.argv[1:], None, "", "timed out after 30 s")
print(json.dumps([result.returncode, result.stderr, time.perf_counter() - started,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))
"""


def measured(argv: list[str], tmp: Path) -> tuple[int, str, float, float]:
    """Exit status, stderr, wall seconds and peak RSS (MB) of the command."""
    result = subprocess.run([PYTHON, "-c", MEASURE, *argv], cwd=tmp, env=clean_env(tmp) | {"PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=600)
    status, stderr, seconds, peak_mb = json.loads(result.stdout)
    return status, stderr, seconds, peak_mb


@pytest.fixture(scope="module")
def bombs() -> Iterator[list[tuple[str, float, float, int]]]:
    """Each bomb's (first error line, seconds, peak MB, bytes); one row of the README's fault table at the end."""
    seen: list[tuple[str, float, float, int]] = []
    yield seen
    if seen:
        line, size = seen[0][0], seen[0][3]
        report("YAML alias bomb", f"a {size}-byte config of nested aliases (9^9 items) in an int, bool, float or list "
               "field: `python -m ae_dist.train --config`, `ae_dist.evaluate` (the run's config.yaml), `launch --config`",
               f"`{line[:line.index(' (/')]} (FILE:2): ...`, exit 2, each within {max(s for _, s, _, _ in seen):.1f} s and "
               f"{max(m for _, _, m, _ in seen):.0f} MB peak RSS, as for an ordinary bad value", "none", "none")


@pytest.mark.parametrize("module, kind", [("ae_dist.train", kind) for kind in FIELDS]
                         + [("ae_dist.evaluate", "list"), ("launch", "int")])
def test_alias_bomb_is_one_line_fast_and_small(tmp_path: Path, module: str, kind: str, bombs: list) -> None:
    bomb, ordinary = tmp_path / "bomb.yaml", tmp_path / "ordinary.yaml"
    bomb.write_text(BOMB_HEAD + FIELDS[kind], encoding="utf-8")
    ordinary.write_text(ORDINARY, encoding="utf-8")
    assert len(bomb.read_bytes()) < 400
    base_status, _, _, base_mb = measured(entry(module, ordinary), tmp_path)
    status, stderr, seconds, peak_mb = measured(entry(module, bomb), tmp_path)
    print(f"{module} {kind}: {seconds:.2f} s, peak {peak_mb:.0f} MB (ordinary bad config: {base_mb:.0f} MB)")
    assert base_status == 2 and status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "uses a YAML alias (*a)" in lines[0], stderr
    assert seconds < SECONDS and peak_mb - base_mb < EXTRA_MB
    bombs.append((lines[0], seconds, peak_mb, len(bomb.read_bytes())))


def broken_run(tmp: Path, hole: str) -> Path:
    run = tmp / "run"
    run.mkdir()
    config = load_config("digits")
    (run / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
    if hole == "config is a list":
        (run / "config.yaml").write_text("- train\n- epochs: 3\n", encoding="utf-8")
    elif hole == "config not utf-8":
        (run / "config.yaml").write_bytes(b"train:\n  epochs: \xff\xfe3\n")
    elif hole == "config repeats a section":
        (run / "config.yaml").write_text(dump_yaml(config) + "train:\n  epochs: 1\n", encoding="utf-8")
    elif hole == "weights of another shape":
        torch.save(build_model(ModelConfig(hidden=(8,))).state_dict(), run / "model.pt")
    elif hole == "weights not a state_dict":
        torch.save([torch.zeros(3)], run / "model.pt")
    elif hole == "weights not torch":
        (run / "model.pt").write_bytes(b"not a zip file")
    return run


HOLES = {"config is a list": "must be a mapping of sections (it holds a list)",
         "config not utf-8": "unreadable (UnicodeDecodeError)",
         "config repeats a section": "holds the key train twice",
         "weights of another shape": "weights do not fit the run's model (Error(s) in loading state_dict",
         "weights not a state_dict": "weights are a list, not a state_dict",
         "weights not torch": "model.pt cannot be loaded"}


@pytest.fixture(scope="module")
def holes() -> Iterator[list[str]]:
    seen: list[str] = []
    yield seen
    if seen:
        report("broken run folder", f"`python -m ae_dist.evaluate RUN` with {', '.join(seen)}",
               "one `error:` line naming the file, e.g. `error: run config holds the key train twice (RUN/config.yaml:N): "
               "...`; exit 2, no traceback, nothing written", "none", "none")


@pytest.mark.parametrize("hole", HOLES)
def test_evaluate_on_a_broken_run_folder_is_one_line(tmp_path: Path, hole: str, holes: list) -> None:
    run = broken_run(tmp_path, hole)
    result = run_module("ae_dist.evaluate", str(run), tmp=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and HOLES[hole] in lines[0], result.stderr
    assert not (run / "eval").exists()
    holes.append(hole)


def test_run_dir_tilde_is_the_home_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    small = ["data.name=synthetic", "data.synthetic_train=64", "data.synthetic_test=16", "train.batch_size=32",
             "model.hidden=8", "train.epochs=1", "wandb.mode=disabled", "train.threads=1"]
    result = run_module("ae_dist.train", "run.dir=~/runs/x", *small, tmp=tmp_path, cwd=work)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / "runs" / "x" / "model.pt").is_file()  # clean_env's HOME
    assert not (work / "~").exists()
    report("run.dir=~/x", "`python -m ae_dist.train run.dir=~/runs/x` (run.dir from a shared YAML file alike)",
           "the run lands in $HOME/runs/x, as data.root's ~ does; no folder literally named ~ is made", "none", "none")
