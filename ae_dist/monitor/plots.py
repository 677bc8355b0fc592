"""The run's pictures: reconstructions, latent codes, a VAE's samples, loss curves (matplotlib, Agg)."""

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
    """Test images (top row) above their reconstructions (bottom row): (N, C, H, W), grayscale or colour."""
    count = len(images)
    fig, axes = plt.subplots(2, count, figsize=(count * 1.0, 2.3), squeeze=False)
    for i in range(count):
        for row, batch in enumerate((images, recons)):
            ax = axes[row, i]
            picture = batch[i].detach().float().cpu().clamp(0, 1)
            if picture.dim() == 3 and picture.shape[0] == 3:  # RGB: channels last for matplotlib
                ax.imshow(picture.permute(1, 2, 0).numpy())
            else:
                ax.imshow(picture.reshape(picture.shape[-2], picture.shape[-1]).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("output")
    fig.suptitle(title or "test images and their reconstructions")
    fig.tight_layout()
    _save(fig, path)


def draw_samples(images: torch.Tensor, path: Path, title: str = "", columns: int = 10) -> None:
    """Generated images in rows of ``columns`` (a VAE's decoded draws from its prior)."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.0, rows * 1.05 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            ax.imshow(images[i].reshape(28, 28).float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("on" if i < len(images) else "off")
    fig.suptitle(title or "decoded samples from the prior")
    fig.tight_layout()
    _save(fig, path)


def draw_latent(codes: torch.Tensor, labels: torch.Tensor, path: Path, title: str = "",
                class_names: Sequence[str] | None = None) -> None:
    """Latent codes coloured by class, with a legend naming the classes: a 3-D (or 2-D, 1-D) scatter; codes wider
    than 3 as their 2-D PCA projection, which the title says."""
    codes, labels = codes.float().cpu(), labels.cpu()
    title = title or "test-set latent codes"
    if codes.shape[1] > 3:
        title = f"{title}\n2-D PCA projection of the {codes.shape[1]}-D codes"
        codes = pca_2d(codes)
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
    ax.set_title(title)
    fig.subplots_adjust(right=0.72)
    _save(fig, path)


def pca_2d(codes: torch.Tensor) -> torch.Tensor:
    """The codes' coordinates along their two principal axes."""
    centred = codes - codes.mean(0)
    return centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T


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
