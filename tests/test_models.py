"""Models: the seed's exact MLP, and a conv autoencoder that beats it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ae_dist.config import ModelConfig
from ae_dist.models import build_model
from tests.helpers.commands import REPO, run_train
from tests.helpers.run_files import epoch_records


def seed_autoencoder() -> nn.Module:
    """The seed tutorial's layers, verbatim (its optimizer and train loop left out)."""
    model = nn.Module()
    model.encoder = nn.Sequential(nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                  nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3))
    model.decoder = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 64), nn.ReLU(),
                                  nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 28 * 28), nn.Sigmoid())
    return model


@pytest.mark.fast
def test_mlp_state_dict_matches_the_seed_model() -> None:
    ours, seed = build_model(ModelConfig()).state_dict(), seed_autoencoder().state_dict()
    assert list(ours) == list(seed)
    assert [t.shape for t in ours.values()] == [t.shape for t in seed.values()]
    assert sum(t.numel() for t in ours.values()) == 219_891
    model = build_model(ModelConfig())
    assert sum(p.numel() for p in model.encoder.parameters()) == 109_555
    assert sum(p.numel() for p in model.decoder.parameters()) == 110_336
    assert isinstance(model.decoder[-1], nn.Sigmoid)


@pytest.mark.fast
def test_mlp_computes_what_the_seed_computes() -> None:
    ours, seed = build_model(ModelConfig()), seed_autoencoder()
    seed.load_state_dict(ours.state_dict())
    images = torch.rand(5, 1, 28, 28)
    expected = seed.decoder(seed.encoder(images.view(5, -1))).view(5, 1, 28, 28)
    assert torch.equal(ours(images), expected)


@pytest.mark.fast
def test_models_keep_shape_and_range() -> None:
    for name in ("mlp", "conv"):
        for latent in (2, 3, 16):
            model = build_model(ModelConfig(name=name, latent_dim=latent))
            images = torch.rand(4, 1, 28, 28)
            assert model.encode(images).shape == (4, latent)
            out = model(images)
            assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1


def final_test_loss(run_dir: Path) -> float:
    return epoch_records(run_dir)[-1]["test_loss"]


def test_conv_beats_mlp_on_digits_at_latent_3(tmp_path: Path) -> None:
    common = ["train.epochs=8", "optim.lr=1e-3", "wandb.mode=disabled", "checkpoint.every_steps=0", "run.progress=off"]
    run_train(["--config", str(REPO / "configs/digits.yaml"), f"run.dir={tmp_path / 'mlp'}", *common], tmp_path)
    run_train(["--config", str(REPO / "configs/digits_conv.yaml"), f"run.dir={tmp_path / 'conv'}", *common], tmp_path)
    mlp, conv = final_test_loss(tmp_path / "mlp"), final_test_loss(tmp_path / "conv")
    print(f"digits test loss after 8 epochs, latent 3: mlp {mlp:.5f}, conv {conv:.5f}")
    assert conv < mlp
