"""Data: torchvision's IDX files, the bundled digits, synthetic images, rank-invariant batches."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from ae_dist.config import DataConfig
from ae_dist.data import EpochBatches, Split, load_split, synthetic_split
from ae_dist.errors import UsageError
from benchmarks.idx_files import write_fashion_mnist
from tests.helpers.commands import PYTHON, REPO, clean_env


@pytest.mark.fast
def test_torchvision_layout_loads_as_uint8_tensors(tmp_path: Path) -> None:
    raw = write_fashion_mnist(tmp_path)
    split = load_split(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), "train")
    assert split.images.shape == (120, 1, 28, 28) and split.images.dtype == torch.uint8
    assert split.labels.tolist() == [i % 10 for i in range(120)]
    expected = (raw / "train-images-idx3-ubyte").read_bytes()[16:16 + 784]
    assert split.images[0].flatten().tolist() == list(expected)
    assert len(load_split(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), "test")) == 40


def test_training_reads_written_idx_files(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "data", train=256, test=64)
    result = subprocess.run([PYTHON, "-m", "ae_dist.train", "data.name=fashion_mnist", f"data.root={tmp_path / 'data'}",
                             "data.download=false", "train.epochs=1", f"run.dir={tmp_path / 'run'}", "wandb.mode=disabled"],
                            cwd=REPO, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout and (tmp_path / "run" / "model.pt").exists()


def test_missing_data_without_network_is_one_line(tmp_path: Path) -> None:
    # A proxy on a closed local port: the download fails at once and no traffic leaves the machine.
    env = clean_env(tmp_path, https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9",
                    HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="")
    result = subprocess.run([PYTHON, "-m", "ae_dist.train", f"data.root={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in lines[0]
    assert "data.name=digits" in lines[0]


@pytest.mark.fast
def test_missing_data_with_download_off(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="data.download=false"):
        load_split(DataConfig(name="mnist", root=str(tmp_path), download=False), "train")


@pytest.mark.fast
def test_digits_split_is_fixed_and_disjoint() -> None:
    train, test = load_split(DataConfig(name="digits"), "train"), load_split(DataConfig(name="digits"), "test")
    assert (len(train), len(test)) == (1500, 297)
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    again = load_split(DataConfig(name="digits"), "test")
    assert torch.equal(test.images, again.images)
    rows = {bytes(x.flatten().tolist()) for x in train.images}
    assert sum(bytes(x.flatten().tolist()) in rows for x in test.images) < 5  # a few digits are exact twins


@pytest.mark.fast
def test_synthetic_is_deterministic_and_sized() -> None:
    a, b = synthetic_split(500, seed=0), synthetic_split(500, seed=0)
    assert torch.equal(a.images, b.images) and a.images.shape == (500, 1, 28, 28)
    assert not torch.equal(a.images, synthetic_split(500, seed=1).images)


@pytest.mark.fast
@pytest.mark.parametrize("world_size", [2, 4])
def test_union_of_rank_batches_is_world_size_invariant(world_size: int) -> None:
    count, global_batch = 203, 16
    ids = Split(torch.arange(count).view(-1, 1, 1, 1).float(), torch.arange(count))  # each image is its id
    one = [b.flatten().mul(255).round().long().tolist() for b in EpochBatches(ids, global_batch, 0, 1, seed=5).epoch(3)]
    per_rank = [[b.flatten().mul(255).round().long().tolist()
                 for b in EpochBatches(ids, global_batch, r, world_size, seed=5).epoch(3)] for r in range(world_size)]
    assert len(one) == count // global_batch
    for k, batch in enumerate(one):
        union = sorted(i for rank in per_rank for i in rank[k])
        assert union == sorted(batch)
    # resuming at batch k yields the same remaining batches
    rest = [b.flatten().mul(255).round().long().tolist() for b in EpochBatches(ids, global_batch, 0, 1, seed=5).epoch(3, start=7)]
    assert rest == one[7:]


@pytest.mark.fast
def test_validation_rows_are_held_out_of_the_training_split_by_a_fixed_hash() -> None:
    whole = load_split(DataConfig(name="digits"), "train")
    train, val = (load_split(DataConfig(name="digits", val_fraction=0.2), part) for part in ("train", "val"))
    assert len(train) + len(val) == len(whole) and 0.15 < len(val) / len(whole) < 0.25
    rows = {bytes(image.numpy()) for image in whole.images}
    assert {bytes(image.numpy()) for image in val.images} | {bytes(image.numpy()) for image in train.images} == rows
    assert not {bytes(image.numpy()) for image in val.images} & {bytes(image.numpy()) for image in train.images}
    more = load_split(DataConfig(name="digits", val_fraction=0.3), "val")  # a larger share keeps the rows it had
    assert {bytes(image.numpy()) for image in val.images} <= {bytes(image.numpy()) for image in more.images}
    assert len(load_split(DataConfig(name="digits"), "val")) == 0
