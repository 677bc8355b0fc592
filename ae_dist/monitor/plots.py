"""The run's pictures: reconstructions, latent codes, loss curves (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ae_dist.run.lease import check_held  # noqa: E402


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        check_held(path.name)  # a holder taken over writes nothing more (ae_dist.run.lease)
        fig.savefig(tmp, dpi=100)
        check_held(path.name)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a lost lease: leave no partial picture behind
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def draw_reconstructions(images: torch.Tensor, recons: torch.Tensor, path: Path, title: str = "") -> None:
    """Test images (top row) above their reconstructions (bottom row)."""
    count = len(images)
    fig, axes = plt.subplots(2, count, figsize=(count * 1.0, 2.3))
    for i in range(count):
        for row, batch in enumerate((images, recons)):
            ax = axes[row, i]
            ax.imshow(batch[i].reshape(28, 28).float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("output")
    fig.suptitle(title or "test images and their reconstructions")
    fig.tight_layout()
    _save(fig, path)


def draw_latent(codes: torch.Tensor, labels: torch.Tensor, path: Path, title: str = "",
                class_names: Sequence[str] | None = None) -> None:
    """Latent codes coloured by class, with a legend naming the classes: 3-D scatter (wider codes projected by PCA)."""
    codes, labels = codes.float().cpu(), labels.cpu()
    if codes.shape[1] > 3:
        centred = codes - codes.mean(0)
        codes = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:3].T
    fig = plt.figure(figsize=(7.5, 5))
    three_d = codes.shape[1] == 3
    ax = fig.add_subplot(projection="3d") if three_d else fig.add_subplot()
    if not three_d and codes.shape[1] == 1:
        codes = torch.cat([codes, torch.zeros(len(codes), 1)], dim=1)
    colours = plt.get_cmap("tab10")
    for label in sorted(set(labels.tolist())):
        points = codes[labels == label].T
        name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
        ax.scatter(*points[:3], s=4, color=colours(label % 10), label=name)
    ax.legend(title="class", loc="center left", bbox_to_anchor=(1.05, 0.5), markerscale=3, fontsize="small")
    ax.set_title(title or "test-set latent codes")
    fig.subplots_adjust(right=0.72)
    _save(fig, path)


def draw_loss(records: list[dict[str, Any]], path: Path) -> None:
    """Train loss per logged step and per epoch, test loss per epoch."""
    steps = [r for r in records if r["kind"] == "train"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], alpha=0.4, label="train (logged steps)")
    if epochs:
        ax.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="train (epoch mean)")
        ax.plot([r["step"] for r in epochs], [r["test_loss"] for r in epochs], "s-", label="test")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
