"""`python -m ae_dist.evaluate RUN`: pictures in RUN/eval/, titled; the training's pictures untouched; class names."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ae_dist import data, evaluate
from ae_dist.monitor import plots
from ae_dist.run.metrics import read_metrics
from tests.helpers.commands import PYTHON, REPO, clean_env

PICTURES = ("recon.png", "latent.png", "loss.png")


def test_evaluate_writes_eval_and_keeps_the_training_pictures(tmp_path: Path, reference_runs) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_runs((), 1), run, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    before = {name: (run / name).read_bytes() for name in PICTURES}
    result = subprocess.run([PYTHON, "-m", "ae_dist.evaluate", "train.eval_batch_size=100", str(run)], cwd=REPO,
                            env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    last = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    assert abs(float(result.stdout.split()[2]) - last["test_loss"]) < 1e-6
    assert f"model.pt, step {last['step']}" in result.stdout
    assert all((run / name).read_bytes() == before[name] for name in PICTURES)  # the training's, as they were
    assert all((run / "eval" / name).stat().st_size > 0 for name in PICTURES)


def test_evaluate_titles_say_which_weights_and_the_legend_names_classes(tmp_path: Path, reference_runs,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference_runs((), 1), run, ignore=shutil.ignore_patterns("wandb"))
    (run / "model.pt").unlink()  # a run still training: the newest checkpoint's weights
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.__setitem__(path.name, fig))
    assert evaluate.main([str(run)]) == 0
    step = max(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.pt"))
    assert f"step_{step:08d}.pt, step {step}" in drawn["recon.png"].get_suptitle()
    latent = drawn["latent.png"].axes[0]
    assert f"step {step}" in latent.get_title()
    assert [t.get_text() for t in latent.get_legend().get_texts()] == list("0123456789")


@pytest.mark.fast
def test_fashion_mnist_legend_has_the_ten_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.__setitem__(path.name, fig))
    labels = torch.arange(20) % 10
    plots.draw_latent(torch.randn(20, 2), labels, tmp_path / "latent.png", "t", data.CLASS_NAMES["fashion_mnist"])
    names = [t.get_text() for t in drawn["latent.png"].axes[0].get_legend().get_texts()]
    assert names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"]
