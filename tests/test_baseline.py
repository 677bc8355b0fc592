"""The run's yardstick, PCA at the latent size: its figure is scikit-learn's on the same split, it is kept in the
run folder for resumes, and the epoch lines and the final line say how the model compares with it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from ae_dist import baseline, data
from ae_dist.config import load_config
from ae_dist.monitor.console import epoch_line
from ae_dist.run.folder import RunDir
from tests.helpers.commands import TINY, run_train
from tests.helpers.run_files import epoch_records


def sklearn_pca_test_loss(train: data.Split, test: data.Split, k: int) -> float:
    """scikit-learn's exact PCA fitted on the whole training split; its reconstructions of the test split clipped
    to [0, 1], the mean squared error over every pixel."""
    fit = train.images.reshape(len(train), -1).numpy() / np.float64(255)
    shown = test.images.reshape(len(test), -1).numpy() / np.float64(255)
    pca = PCA(n_components=k, svd_solver="full").fit(fit)
    return float(((np.clip(pca.inverse_transform(pca.transform(shown)), 0, 1) - shown) ** 2).mean())


@pytest.mark.fast
@pytest.mark.parametrize("k", [3, 8])
def test_baseline_is_scikit_learns_pca_on_the_same_split(k: int) -> None:
    config = load_config("digits")
    train, test = data.load_split(config.data, "train"), data.load_split(config.data, "test")
    ours = baseline.compute(train, test, k, seed=0, batch_size=100)
    assert ours is not None and ours.name == f"PCA-{k}" and ours.sample_images == len(train)  # 1,500 images < 256 MB
    assert ours.test_loss == pytest.approx(sklearn_pca_test_loss(train, test, k), rel=1e-3)
    again = baseline.compute(train, test, k, seed=0, batch_size=297)
    assert again.test_loss == pytest.approx(ours.test_loss, rel=1e-6)  # seeded; the batch only orders float sums


@pytest.mark.fast
def test_the_sample_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = data.synthetic_split(2000, seed=0), data.synthetic_split(300, seed=1)
    monkeypatch.setattr(baseline, "SAMPLE_BYTES", 500 * 28 * 28 * 4)  # room for 500 float32 images
    sampled = baseline.compute(train, test, 3, seed=0, batch_size=1000)
    assert sampled.sample_images == 500
    assert sampled.test_loss == pytest.approx(sklearn_pca_test_loss(train, test, 3), rel=0.05)  # a fair sample


@pytest.mark.fast
def test_the_run_folder_keeps_it_for_its_key(tmp_path: Path) -> None:
    config = load_config("digits", [f"run.dir={tmp_path}"])
    train, test = data.load_split(config.data, "train"), data.load_split(config.data, "test")
    folder = RunDir(tmp_path)
    first = baseline.for_run(config, folder, train, test)
    saved = json.loads(folder.baseline.read_text())
    assert saved["baseline"]["test_loss"] == first.test_loss and saved["key"]["latent_dim"] == 3
    saved["baseline"]["test_loss"] = 0.5  # what a later start finds: it reads the file, it does not recompute
    folder.baseline.write_text(json.dumps(saved))
    assert baseline.for_run(config, folder, train, test).test_loss == 0.5
    assert baseline.for_run(load_config("digits", ["data.root=/elsewhere"]), folder, train, test).test_loss == 0.5
    wider = load_config("digits", ["model.latent_dim=5"])
    assert baseline.for_run(wider, folder, train, test).name == "PCA-5"  # another key: computed again, stored
    assert baseline.cached(wider, folder).name == "PCA-5" and baseline.cached(config, folder) is None


@pytest.mark.fast
def test_lines_say_how_the_model_compares() -> None:
    record = {"epoch": 30, "train_loss": 0.0152, "test_loss": 0.0151, "samples_per_s": 3000.0}
    base = baseline.Baseline("PCA-3", 0.0251, 1500, 0.1)
    line = epoch_line(record | base.fields(0.0151), 30, base.name)
    assert line == "epoch 30/30, loss: 0.0152, test loss: 0.0151 (0.60x PCA-3), 3,000 samples/s"
    assert epoch_line(record, 30) == "epoch 30/30, loss: 0.0152, test loss: 0.0151, 3,000 samples/s"
    assert base.verdict(0.0151) == "test loss 0.0151 is 0.60x PCA-3's 0.0251: the autoencoder beats PCA with 3 components"
    assert "does NOT beat PCA with 3 components" in base.verdict(0.0273)


def test_a_resumed_run_reads_the_baseline_its_folder_holds(tmp_path: Path, reference_runs) -> None:
    """A complete TINY run, continued for one more epoch: the epochs before and after report the same baseline, the
    one in baseline.json (set here to 0.5 to tell it from a recomputed one), and the final line compares with it."""
    run = tmp_path / "run"
    shutil.copytree(reference_runs((), 1), run, ignore=shutil.ignore_patterns("wandb"))
    before = epoch_records(run)
    saved = json.loads((run / "baseline.json").read_text())
    assert [r["baseline_test_loss"] for r in before] == [saved["baseline"]["test_loss"]] * len(before)
    assert all(r["test_loss_ratio"] == pytest.approx(r["test_loss"] / r["baseline_test_loss"]) for r in before)
    saved["baseline"]["test_loss"] = 0.5
    (run / "baseline.json").write_text(json.dumps(saved))
    result = run_train([*TINY, f"run.dir={run}", "train.epochs=4", "wandb.mode=disabled"], tmp_path)
    last = epoch_records(run)[-1]
    assert (last["epoch"], last["baseline_test_loss"]) == (4, 0.5)
    assert re.search(rf"epoch 4/4, .*test loss: {last['test_loss']:.4f} \({last['test_loss'] / 0.5:.2f}x PCA-3\)",
                     result.stdout), result.stdout
    assert result.stdout.splitlines()[-1] == baseline.Baseline("PCA-3", 0.5, 0, 0).verdict(last["test_loss"])
