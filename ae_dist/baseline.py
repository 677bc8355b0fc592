"""The yardstick every run is measured against: PCA with ``model.latent_dim`` components.

A 3-dimensional autoencoder is worth training only if it reconstructs better than the best
linear map of the same size. `for_run` fits PCA on a seeded sample of the training split
(at most `SAMPLE_BYTES` of float32 pixels, drawn without replacement by ``train.seed``) with
randomized PCA (`components`: a Gaussian range finder with `OVERSAMPLE` extra columns and
`POWER_ITERATIONS` power iterations, Halko, Martinsson and Tropp 2011), then scores it on the
whole test split exactly as `ae_dist.engine.evaluate` scores the model: reconstructions
clipped to [0, 1] (the model's sigmoid range), squared errors summed per batch of
``train.eval_batch_size`` in float64, divided by pixels and images. Rank 0 computes it once
(about a second for 60,000 28x28 images on one busy CPU core: benchmarks/baseline_cost.py) and keeps it in the run folder
(`RunDir.baseline`) for resumes and `ae_dist.evaluate`; the key stored with it says which
data, latent size, seed and sample it belongs to, so a changed one is computed again (a
changed ``train.eval_batch_size`` changes only the order of a float sum, and is not in it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ae_dist.config import Config, to_dict
from ae_dist.data import Split
from ae_dist.run.folder import RunDir

SAMPLE_BYTES = 64 << 20  # float32 pixels of the training sample PCA is fitted on: 21,399 images of 28x28
OVERSAMPLE = 10  # extra random directions of the range finder
POWER_ITERATIONS = 2
METHOD = f"randomized PCA, {OVERSAMPLE} extra columns, {POWER_ITERATIONS} power iterations"
WHERE_DATA_LIVES = ("root", "download", "cache_dir")  # data keys that do not change the images


@dataclass(frozen=True)
class Baseline:
    name: str  # "PCA-3"
    test_loss: float  # MSE of its clipped reconstructions over the whole test split
    sample_images: int  # training images it was fitted on
    seconds: float  # time to fit and score it

    def fields(self, test_loss: float) -> dict[str, float]:
        """The epoch record's keys: the baseline's test loss and the model's as a multiple of it."""
        return {"baseline_test_loss": self.test_loss, "test_loss_ratio": test_loss / self.test_loss}

    def verdict(self, test_loss: float) -> str:
        """One line: whether the model beats the baseline."""
        ratio = test_loss / self.test_loss
        components = self.name.removeprefix("PCA-")
        said = (f"test loss {test_loss:.4f} is {ratio:.2f}x {self.name}'s {self.test_loss:.4f}: the autoencoder ")
        if ratio < 1:
            return said + f"beats PCA with {components} components"
        return said + f"does NOT beat PCA with {components} components: train longer or raise optim.lr"


def key(config: Config) -> dict[str, Any]:
    """What the baseline depends on: the data (not where it lives), the latent size, the seed, the method."""
    data = {k: v for k, v in to_dict(config)["data"].items() if k not in WHERE_DATA_LIVES}
    wanted = {"data": data, "latent_dim": config.model.latent_dim, "seed": config.train.seed,
              "sample_bytes": SAMPLE_BYTES, "method": METHOD}
    return json.loads(json.dumps(wanted))  # as it reads back from the file (lists, not tuples)


def for_run(config: Config, run_dir: RunDir, train: Split, test: Split) -> Baseline | None:
    """The run's baseline from ``run_dir`` when it was computed for this key, else computed and stored there.

    None when PCA at this size would be exact (``latent_dim`` at least the pixels or the sample size) or the
    test split is empty: there is nothing to compare with.
    """
    found = cached(config, run_dir)
    if found is None:
        found = compute(train, test, config.model.latent_dim, config.train.seed, config.train.eval_batch_size)
        if found is not None and run_dir.root.is_dir():
            write(run_dir, key(config), found)
    return found


def cached(config: Config, run_dir: RunDir) -> Baseline | None:
    """The baseline ``run_dir`` holds for this config's key; None when it holds none or another key's."""
    saved = read(run_dir)
    return saved[1] if saved is not None and saved[0] == key(config) else None


def compute(train: Split, test: Split, k: int, seed: int, batch_size: int) -> Baseline | None:
    started = time.perf_counter()
    pixels = train.images[0].numel() if len(train) else 0
    count = min(len(train), max(1, SAMPLE_BYTES // (4 * max(pixels, 1))))
    if not len(test) or k >= min(pixels, count):
        return None
    generator = torch.Generator(device=train.images.device).manual_seed(seed)
    rows = torch.randperm(len(train), generator=generator, device=train.images.device)[:count].sort().values
    sample = train.images[rows].reshape(count, pixels).float().div_(255)
    mean = (torch.ones(1, count, device=sample.device) @ sample).squeeze(0).div_(count)  # as a product: 8x faster than .mean(0)
    basis = components(sample.sub_(mean), k, generator)
    del sample
    total = torch.zeros((), dtype=torch.float64, device=test.images.device)
    for start in range(0, len(test), batch_size):
        images = test.images[start:start + batch_size].float().div_(255)
        flat = images.reshape(len(images), pixels)
        recon = ((flat - mean) @ basis.T @ basis + mean).clamp_(0, 1)
        total += F.mse_loss(recon, flat, reduction="sum").double()
    return Baseline(f"PCA-{k}", float(total) / pixels / len(test), count, time.perf_counter() - started)


def components(centered: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The top ``k`` principal directions (k, D) of a centered (N, D) matrix, by randomized range finding."""
    width = min(k + OVERSAMPLE, *centered.shape)
    omega = torch.randn(centered.shape[1], width, generator=generator, device=centered.device)
    q = torch.linalg.qr(centered @ omega).Q
    for _ in range(POWER_ITERATIONS):  # each pass sharpens the gap between kept and dropped directions
        q = torch.linalg.qr(centered.T @ q).Q
        q = torch.linalg.qr(centered @ q).Q
    _, _, vh = torch.linalg.svd(q.T @ centered, full_matrices=False)
    return vh[:k]


def read(run_dir: RunDir) -> tuple[dict[str, Any], Baseline] | None:
    """(key, baseline) stored in the run folder; None when missing or unreadable."""
    try:
        saved = json.loads(run_dir.baseline.read_text(encoding="utf-8"))
        return saved["key"], Baseline(**saved["baseline"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(run_dir: RunDir, wanted: dict[str, Any], found: Baseline) -> None:
    tmp = run_dir.baseline.with_name(f".{run_dir.baseline.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"key": wanted, "baseline": asdict(found)}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir.baseline)
