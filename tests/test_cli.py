"""The trainer's and evaluate's command lines: flags and overrides in any order, hints, one-line errors, light imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ae_dist.config import leaf_fields, load_config
from ae_dist.config.cli import evaluate_args, train_args
from ae_dist.errors import UsageError
from tests.helpers.commands import PYTHON, REPO, clean_env, run_module

HEAVY = ("torch", "matplotlib", "wandb", "torchvision", "sklearn", "submitit")


def command(module: str, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    return run_module(module, *args, tmp=tmp, timeout=120)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_overrides_and_flags_in_any_order(tmp_path: Path) -> None:
    config, _ = train_args(["train.epochs=1", "--config", "digits", "run.dir=x", "optim.lr=2e-3"])
    assert (config.train.epochs, config.data.name, config.run.dir, config.optim.lr) == (1, "digits", "x", 2e-3)
    result = command("ae_dist.train", "train.epochs=1", "--config", "digits", f"run.dir={tmp_path / 'r'}",
                     "--print-config", "train.seed=5", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["epochs"] == 1 and printed["train"]["seed"] == 5 and printed["data"]["name"] == "digits"
    assert printed["run"]["dir"] == str(tmp_path / "r") and not (tmp_path / "r").exists()  # printed, nothing run


def test_print_config_is_the_resolved_config(tmp_path: Path) -> None:
    result = command("ae_dist.train", "--print-config", "--config=digits_conv", "model.latent_dim=5", tmp=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    (tmp_path / "printed.yaml").write_text(result.stdout, encoding="utf-8")
    assert load_config(tmp_path / "printed.yaml") == load_config("digits_conv", ["model.latent_dim=5"])


@pytest.mark.parametrize("args, hint", [(["--epochs", "3"], "did you mean train.epochs=3?"),
                                        (["--epochs=3"], "did you mean train.epochs=3?"),
                                        (["--lr", "3e-3"], "did you mean optim.lr=3e-3?"),
                                        (["--batch-size", "32", "train.seed=1"], "did you mean train.batch_size=32?"),
                                        (["--run.dir", "x"], "did you mean run.dir=x?"),
                                        (["--confg", "digits"], "did you mean --config?")])
def test_an_unknown_flag_names_the_override_it_means(tmp_path: Path, args: list[str], hint: str) -> None:
    line = one_error_line(command("ae_dist.train", "--config", "digits", *args, tmp=tmp_path))
    assert line.startswith(f"error: unknown option {args[0].split('=')[0]} (python -m ae_dist.train): {hint}")


@pytest.mark.parametrize("module, args, needle", [
    ("ae_dist.train", ["--config"], "argument --config: expected one argument"),
    ("ae_dist.train", ["--print-config=yes"], "ignored explicit argument"),
    ("ae_dist.train", ["epochs"], "override is not key=value (epochs)"),
    ("ae_dist.train", ["epochs=3"], "unknown config key in overrides (epochs): did you mean train.epochs?"),
    ("ae_dist.evaluate", [], "give one run folder, not 0"),
    ("ae_dist.evaluate", ["runs/a", "runs/b"], "give one run folder, not 2"),
    ("ae_dist.evaluate", ["--to", "x"], "unknown option --to"),
])
def test_every_argument_error_is_one_line_and_exit_2(tmp_path: Path, module: str, args: list[str], needle: str) -> None:
    assert needle in one_error_line(command(module, *args, tmp=tmp_path))


def test_help_shows_the_values_in_effect(tmp_path: Path) -> None:
    default = command("ae_dist.train", "--help", tmp=tmp_path)
    assert default.returncode == 0 and default.stderr == ""
    rows = {line.split()[0]: line for line in default.stdout.splitlines() if line.startswith("  ") and "." in line.split()[0]}
    assert set(leaf_fields()) <= set(rows)
    assert "'runs/fashion_mnist'" in rows["run.dir"]
    assert "[fashion_mnist | mnist | digits | synthetic | folder | array]" in rows["data.name"]
    digits = command("ae_dist.train", "--config", "digits", "--help", tmp=tmp_path)
    assert "'runs/digits'" in next(line for line in digits.stdout.splitlines() if line.strip().startswith("run.dir"))


@pytest.mark.fast
def test_evaluate_takes_the_run_and_overrides_in_any_order(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    args = evaluate_args(["data.root=/d", str(tmp_path / "run"), "train.eval_batch_size=7"])
    assert args.run_dir == tmp_path / "run" and args.overrides == ["data.root=/d", "train.eval_batch_size=7"]
    odd = tmp_path / "lr=1e-3"  # a run folder whose name holds '=' (a sweep point) is still the folder
    odd.mkdir()
    assert evaluate_args([str(odd)]).run_dir == odd
    with pytest.raises(UsageError, match="give one run folder"):
        evaluate_args(["data.root=/d"])


# Runs each command as its entry point does and lists the heavy modules loaded by the time it ended.
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print("heavy:", *sorted(name for name in {heavy!r} if name in sys.modules))
"""


@pytest.mark.parametrize("module, args, status", [
    ("ae_dist.train", ["--help"], 0), ("ae_dist.train", ["train.epochs=x"], 2),
    ("ae_dist.train", ["--config", "digits", "--print-config"], 0), ("ae_dist.train", ["--epochs", "3"], 2),
    ("ae_dist.evaluate", ["--help"], 0), ("ae_dist.evaluate", ["{run}"], 2), ("ae_dist.evaluate", ["{run}", "x.y=1"], 2),
])
def test_help_and_config_errors_load_nothing_heavy(tmp_path: Path, module: str, args: list[str], status: int) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  epochs: three\n", encoding="utf-8")
    result = subprocess.run([PYTHON, "-c", PROBE.format(heavy=HEAVY), module, *(a.format(run=run) for a in args)],
                            cwd=tmp_path, env=clean_env(tmp_path) | {"PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "heavy:", result.stdout[-300:] + result.stderr[-2000:]
    if status == 2:
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_config_modules_do_not_import_torch() -> None:
    code = "import sys, ae_dist.config, ae_dist.config.cli, ae_dist.errors; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# The launcher: --print-config and --dry-run submit nothing and write nothing -----------------------------------

def test_launch_print_config_is_the_resolved_config(tmp_path: Path) -> None:
    result = command("launch", "optim.lr=2e-3", "--print-config", "--config", "digits", "--nodes", "2", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    (tmp_path / "printed.yaml").write_text(result.stdout, encoding="utf-8")
    assert load_config(tmp_path / "printed.yaml") == load_config("digits", ["optim.lr=2e-3"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "printed.yaml"]  # clean_env's home, and ours


@pytest.mark.parametrize("args, shown", [
    (["--nodes", "2", "--sbatch", "mail-type=END", "--time", "90"],
     ["#SBATCH --nodes=2", "#SBATCH --mail-type=END", "#SBATCH --time=90", "#SBATCH --requeue", "srun "]),
    (["--nodes", "2", "--min-nodes", "1", "--exclude", "n7,n[8-9]", "--max-node-failures", "1"],
     ["#SBATCH --nodes=1-2", "#SBATCH --no-kill", "#SBATCH --exclude='n7,n[8-9]'", "elastic: 1-2 nodes",
      "-m launch.elastic settle", "--max-node-failures 1"]),
    (["--sweep", "optim.lr=1e-3,3e-3", "--array-parallelism", "1"], ["#SBATCH --array=0-1%1", "job array of 2 runs"]),
    (["--executor", "local", "--tasks-per-node", "2"], ["submitit local executor parameters:", "tasks_per_node: 2"]),
])
def test_launch_dry_run_prints_the_job_and_submits_nothing(tmp_path: Path, args: list[str], shown: list[str]) -> None:
    fake_bin = tmp_path / "bin"  # an sbatch that would leave a mark if anything called it
    fake_bin.mkdir()
    for tool in ("sbatch", "sinfo", "squeue", "sacct"):
        (fake_bin / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/called-{tool}\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(tmp_path) | {"PYTHONPATH": str(REPO), "PATH": f"{fake_bin}:/usr/bin:/bin"}
    result = subprocess.run([PYTHON, "-m", "launch", "--dry-run", "--config", "digits", *args,
                             "run.dir=runs/{date}/{wandb_run_id}"], cwd=work, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dry run, nothing submitted"), result.stdout
    for needle in shown:
        assert needle in result.stdout, (needle, result.stdout)
    assert "<new-run-id>" in result.stdout
    assert list(work.iterdir()) == [] and not list(tmp_path.glob("called-*")), list(tmp_path.glob("called-*"))


@pytest.mark.parametrize("args, needle", [
    (["--max-restarts", "2"], "--max-restarts is for elastic jobs (--max-restarts): add --min-nodes N"),
    (["--nodes", "2", "--min-nodes", "3"], "--min-nodes 3 is more than --nodes 2"),
    (["--nodes", "2", "--min-nodes", "1", "--exclude", "n1;reboot"], "not a host list 'n1;reboot' (--exclude)"),
    (["--min-nodes", "1", "--executor", "local"], "elastic jobs (--min-nodes) are one SLURM job"),
    (["--sbatch", "exclude=n1"], "sbatch option exclude is the launcher's own"),
])
def test_impossible_elastic_requests_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    line = one_error_line(command("launch", "--dry-run", "--config", "digits", *args, "run.dir=r", tmp=tmp_path))
    assert needle in line, line
    assert not (tmp_path / "r").exists()
