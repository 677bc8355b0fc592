"""The trainer end to end: a 2-process torchrun run, world-size invariance, evaluation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import matplotlib.image
import pytest
import torch

from tests.helpers.commands import PYTHON, REPO, TINY, clean_env, load_weights, run_train
from tests.helpers.run_files import epoch_records, metrics
from tests.helpers.schedule import schedule

RUN_FILES = ("config.yaml", "metrics.jsonl", "model.pt", "recon.png", "latent.png", "loss.png", "checkpoints")


DIGITS_8 = ["--config", str(REPO / "configs/digits.yaml"), "train.epochs=8"]


@pytest.fixture(scope="module")
def torchrun_digits(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("torchrun")
    result = run_train([*DIGITS_8, f"run.dir={tmp / 'run'}"], tmp, nproc=2)
    return tmp / "run", result


def test_torchrun_run_folder_is_complete(torchrun_digits) -> None:
    run_dir, result = torchrun_digits
    for name in RUN_FILES:
        assert (run_dir / name).exists(), name
    assert result.stdout.count("epoch 8/8") == 1  # rank 0 alone prints
    s = schedule(DIGITS_8)  # the tests' step counts are the trainer's own
    assert f"global batch 64 = 2 rank(s) x 32; {s.steps_per_epoch} steps per epoch, {s.epochs} epochs" in result.stdout
    weights = load_weights(run_dir / "model.pt")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in weights)
    assert sum(t.numel() for t in weights.values()) == 219_891


def test_pictures_are_real_images(torchrun_digits) -> None:
    run_dir, _ = torchrun_digits
    for name in ("recon.png", "latent.png", "loss.png"):
        pixels = matplotlib.image.imread(run_dir / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 150 and pixels.shape[1] > 300
        assert pixels[..., :3].std() > 0.05, f"{name} is blank"


def test_test_loss_falls_and_train_loss_is_the_epoch_mean(torchrun_digits) -> None:
    run_dir, _ = torchrun_digits
    epochs = epoch_records(run_dir)
    assert [r["epoch"] for r in epochs] == list(range(1, 9))
    assert epochs[-1]["test_loss"] < 0.8 * epochs[0]["test_loss"]
    assert sum(b["test_loss"] < a["test_loss"] for a, b in zip(epochs, epochs[1:])) >= 5
    assert all(r["samples_per_s"] > 0 for r in epochs)
    steps = [r for r in metrics(run_dir) if r["kind"] == "train"]
    first_epoch_losses = [r["loss"] for r in steps if r["epoch"] == 1]
    assert min(first_epoch_losses) <= epochs[0]["train_loss"] <= max(first_epoch_losses) + 0.1  # a mean, not the last


@pytest.mark.compat
def test_one_process_and_two_reach_the_same_weights(tmp_path: Path, reference_runs) -> None:
    one = reference_runs((), 1)
    two = reference_runs((), 2)
    a, b = load_weights(one / "model.pt"), load_weights(two / "model.pt")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |w1 - w2| = {worst:.3g}")
    assert worst < 1e-4
    loss_one, loss_two = epoch_records(one)[-1]["test_loss"], epoch_records(two)[-1]["test_loss"]
    assert f"{loss_one:.4g}" == f"{loss_two:.4g}", (loss_one, loss_two)
    assert epoch_records(one)[-1]["step"] == epoch_records(two)[-1]["step"]


def test_rerun_of_a_complete_run_finishes_at_once(tmp_path: Path, reference_runs) -> None:
    run_dir = reference_runs((), 1)
    before = (run_dir / "metrics.jsonl").read_text()
    result = run_train([*TINY, f"run.dir={run_dir}"], tmp_path)
    assert "run complete" in result.stdout
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_evaluate_recomputes_the_test_loss(tmp_path: Path, reference_runs) -> None:
    run_dir = reference_runs((), 1)
    (tmp_path / "copy").mkdir()
    for name in ("config.yaml", "model.pt", "metrics.jsonl"):
        (tmp_path / "copy" / name).write_bytes((run_dir / name).read_bytes())
    result = subprocess.run([PYTHON, "-m", "ae_dist.evaluate", str(tmp_path / "copy")], cwd=REPO,
                            env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loss = float(result.stdout.split()[2])
    assert abs(loss - epoch_records(run_dir)[-1]["test_loss"]) < 1e-6
    assert (tmp_path / "copy" / "eval" / "recon.png").exists() and (tmp_path / "copy" / "eval" / "latent.png").exists()
    bad = subprocess.run([PYTHON, "-m", "ae_dist.evaluate", str(tmp_path / "nothing")], cwd=REPO,
                         env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


@pytest.mark.fast
def test_threads_are_each_ranks_share_of_the_cores() -> None:
    from ae_dist.dist.group import cpu_threads

    assert cpu_threads(1, env={"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert cpu_threads(2, requested=5, env={}) == 5
    cores = len(__import__("os").sched_getaffinity(0))
    assert cpu_threads(2, env={}) == max(1, cores // 2)
    assert cpu_threads(64, env={}) == 1
    assert torch.get_num_threads() >= 1
