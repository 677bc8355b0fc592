"""Folder and array sources, their preparation and the batches gathered from them (in process, fast)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from ae_dist.build import check_model_fits
from ae_dist.config import Config, DataConfig, ModelConfig
from ae_dist.data import EpochBatches, Split, custom, load_split
from ae_dist.data.batches import sampler_indices
from ae_dist.data.folder import natural_key
from ae_dist.dist.group import DistInfo
from ae_dist.errors import UsageError
from ae_dist.models import build_model
from ae_dist.prepare import check_cache_dir, prepare
from tests.helpers.photos import BAD, good_count, make_photo_folder, tiles

pytestmark = pytest.mark.fast
ONE = DistInfo(0, 0, 1, 1, torch.device("cpu"), None)


def folder_config(path: Path, cache: Path, **changes) -> DataConfig:
    return replace(DataConfig(name="folder", path=str(path), cache_dir=str(cache), size=(24, 24), channels=3), **changes)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("size", [1, 7, 64, 1000, 1001])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_sampler_indices_are_distributed_samplers_bit_for_bit(size: int, world_size: int) -> None:
    for rank in {0, world_size - 1}:
        for epoch in (0, 3):
            sampler = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=5)
            sampler.set_epoch(epoch)
            assert sampler_indices(size, world_size, rank, 5, epoch).tolist() == list(sampler)


def test_batches_from_a_memory_map_equal_those_from_ram(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (100, 3, 5, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    mapped = torch.from_numpy(np.load(tmp_path / "x.npy", mmap_mode="c"))
    in_ram = Split(torch.from_numpy(images.copy()), torch.zeros(100, dtype=torch.int64))
    on_disk = Split(mapped, torch.zeros(100, dtype=torch.int64))
    for a, b in zip(EpochBatches(in_ram, 20, 1, 2, 0).epoch(2), EpochBatches(on_disk, 20, 1, 2, 0).epoch(2), strict=True):
        assert torch.equal(a, b) and a.shape == (10, 3, 5, 4)


def test_natural_order() -> None:
    assert sorted(["10", "9", "img10.png", "img9.png", "a"], key=natural_key) == ["9", "10", "a", "img9.png", "img10.png"]


def test_photo_folder_prepares_with_every_bad_file_skipped_and_listed(photo_folder: Path, tmp_path: Path) -> None:
    before = tree(photo_folder)
    manifest = prepare(folder_config(photo_folder, tmp_path / "cache"), ONE)
    assert tree(photo_folder) == before  # the user's folder is never written to
    skipped = {path: reason for path, reason in manifest["skipped"]}
    assert set(BAD) == set(skipped), skipped
    assert "megapixels" in skipped["9/huge.png"] and "link loop" in skipped["10/loop"]
    assert "macOS" in skipped["flower/._tile.jpg"]
    assert manifest["class_names"] == ["9", "10", "china", "empty", "flower"]  # natural order
    assert manifest["empty_classes"] == ["empty"]
    assert ["flower/animated.gif", "animated: first frame"] in manifest["notes"]
    counts = {part: info["count"] for part, info in manifest["parts"].items()}
    assert sum(counts.values()) == good_count(photo_folder) and 0 < counts["test"] < counts["train"]
    train = load_split(folder_config(photo_folder, tmp_path / "cache"), "train")
    assert train.images.shape[1:] == (3, 24, 24) and train.images.dtype == torch.uint8 and train.digest
    assert train.classes == ("9", "10", "china", "empty", "flower")


def test_modes_are_converted_not_clipped(tmp_path: Path) -> None:
    photo = tiles(make_photo_folder.__globals__["photographs"]()[0], 1, 32)[0]
    gray = photo.convert("L")
    root = tmp_path / "modes"
    root.mkdir()
    Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257).save(root / "a16.png")
    gray.save(root / "b8.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: white once composited
    rgba.save(root / "c_transparent.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.crop((0, 0, 32, 16)).save(root / "d_rotated.jpg", exif=exif.tobytes())
    cfg = DataConfig(name="folder", path=str(root), cache_dir=str(tmp_path / "cache"), size=(32, 32), fit="stretch",
                     test_fraction=0.0)
    prepare(cfg, ONE)
    images = load_split(cfg, "train").images[:, 0].int()
    assert (images[0] - images[1]).abs().max() <= 1  # 16-bit scaled to 8-bit, not clipped to white
    assert images[0].float().mean() < 200
    assert images[2].min() == 255  # alpha composited on white
    pad = replace(cfg, fit="pad", cache_dir=str(tmp_path / "pad"), size=(16, 32))
    prepare(pad, ONE)
    rotated = load_split(pad, "train").images[3, 0]  # 32x16 rotated by EXIF is 16 wide, 32 high: padded to 32 wide
    assert rotated[:, :7].max() == 0 and rotated[:, 12:20].float().mean() > 0


def test_on_bad_image_error_is_one_line(photo_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        prepare(folder_config(photo_folder, tmp_path / "cache", on_bad_image="error"), ONE)
    assert len(caught.value.lines()) == 1 and "data.on_bad_image=skip" in caught.value.lines()[0]
    assert [p.name for p in (tmp_path / "cache").glob("folder-*") if "." not in p.name] == []  # nothing complete


@pytest.mark.parametrize("case", ["missing", "empty", "no_images", "not_a_folder"])
def test_folders_without_images_are_one_error_line(case: str, tmp_path: Path) -> None:
    root = tmp_path / "images"
    if case == "empty":
        root.mkdir()
    elif case == "no_images":
        (root / "cats").mkdir(parents=True)
        (root / "cats" / "a.jpg").write_text("text")
        (root / "cats" / "b.png").write_bytes(b"")
    elif case == "not_a_folder":
        root.write_text("x")
    with pytest.raises(UsageError) as caught:
        prepare(folder_config(root, tmp_path / "cache"), ONE)
    assert len(caught.value.lines()) == 1 and "data.path" in caught.value.lines()[0]


def test_cache_inside_the_image_folder_or_node_local_for_several_nodes_is_refused(photo_folder: Path) -> None:
    with pytest.raises(UsageError, match="inside the image folder"):
        check_cache_dir(folder_config(photo_folder, photo_folder / "cache"), False)
    with pytest.raises(UsageError, match="node-local"):
        check_cache_dir(folder_config(photo_folder, Path("/tmp/prepared")), True)
    check_cache_dir(folder_config(photo_folder, Path("/tmp/prepared")), False)


def test_adding_files_moves_no_old_file_between_splits(tmp_path: Path) -> None:
    root = tmp_path / "grow"
    (root / "a").mkdir(parents=True)
    photo = make_photo_folder.__globals__["photographs"]()[1]
    for i, tile in enumerate(tiles(photo, 40, 16)):
        tile.save(root / "a" / f"{i}.png")
    cfg = DataConfig(name="folder", path=str(root), cache_dir=str(tmp_path / "c1"), test_fraction=0.3)
    first = custom.plan(cfg, load_split)[1]
    for i, tile in enumerate(tiles(photo, 20, 16, 40)):
        tile.save(root / "a" / f"{40 + i}.png")
    second = custom.plan(cfg, load_split)[1]
    old = {row[1]: row[3] for row in first}
    assert all(old[row[1]] == row[3] for row in second if row[1] in old) and len(second) == 60
    assert {row[3] for row in second} == {"train", "test"}


def test_classes_filter_train_and_val_but_not_test(photo_folder: Path, tmp_path: Path) -> None:
    cfg = folder_config(photo_folder, tmp_path / "cache", classes=("china", "9"), val_fraction=0.2)
    prepare(cfg, ONE)
    train, val, test = (load_split(cfg, part) for part in ("train", "val", "test"))
    assert set(train.labels.tolist()) == {0, 2} and set(val.labels.tolist()) <= {0, 2} and len(val)
    assert 4 in test.labels.tolist()  # flower stays in the test split
    with pytest.raises(UsageError, match="data.classes"):
        custom.plan(replace(cfg, classes=("dogs",)), load_split)


def save_raw(path: Path, array: np.ndarray) -> Path:
    np.save(path, array, allow_pickle=True)
    return path


ARRAY_CASES = {
    "int16": (lambda d: save_raw(d / "x.npy", np.zeros((4, 8, 8), np.int16)), "dtype int16"),
    "shape": (lambda d: save_raw(d / "x.npy", np.zeros((4, 8), np.uint8)), "shape"),
    "channels": (lambda d: save_raw(d / "x.npy", np.zeros((4, 5, 8, 8), np.uint8)), "5 channels"),
    "above_1": (lambda d: save_raw(d / "x.npy", np.full((4, 8, 8), 1.5, np.float32)), "[0, 1]"),
    "nan": (lambda d: save_raw(d / "x.npy", np.full((4, 8, 8), np.nan, np.float16)), "NaN"),
    "pickled": (lambda d: save_raw(d / "x.npy", np.array([{"a": 1}, None], dtype=object)), "unpickling"),
    "missing": (lambda d: d / "nothing.npy", "does not exist"),
    "not_npy": (lambda d: (d / "x.npy").write_text("hello") and d / "x.npy", "not a .npy"),
}


@pytest.mark.parametrize("case", sorted(ARRAY_CASES))
def test_bad_arrays_are_one_error_line(case: str, tmp_path: Path) -> None:
    make, words = ARRAY_CASES[case]
    path = make(tmp_path)
    with pytest.raises(UsageError) as caught:
        prepare(DataConfig(name="array", path=str(path), cache_dir=str(tmp_path / "cache")), ONE)
    assert len(caught.value.lines()) == 1 and words in caught.value.lines()[0], caught.value.lines()


def test_truncated_array_is_refused_before_mapping(tmp_path: Path) -> None:
    path = save_raw(tmp_path / "x.npy", np.zeros((100, 28, 28), np.uint8))
    os.truncate(path, path.stat().st_size - 1000)
    with pytest.raises(UsageError, match="truncated"):
        prepare(DataConfig(name="array", path=str(path), cache_dir=str(tmp_path / "cache"), test_fraction=0), ONE)


def test_labels_of_another_length_are_refused(tmp_path: Path) -> None:
    images = save_raw(tmp_path / "x.npy", np.zeros((10, 8, 8), np.uint8))
    labels = save_raw(tmp_path / "y.npy", np.zeros(9, np.int64))
    with pytest.raises(UsageError, match="9 labels for 10 images"):
        prepare(DataConfig(name="array", path=str(images), labels=str(labels), cache_dir=str(tmp_path / "c")), ONE)


def test_uint8_array_used_whole_is_mapped_in_place_and_floats_are_converted_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 3, 6, 5), dtype=np.uint8)
    np.save(tmp_path / "train.npy", images)
    np.save(tmp_path / "test.npy", images[:10])
    cfg = DataConfig(name="array", path=str(tmp_path / "train.npy"), test_path=str(tmp_path / "test.npy"),
                     cache_dir=str(tmp_path / "cache"))
    manifest = prepare(cfg, ONE)
    assert manifest["parts"]["train"]["file"] == str((tmp_path / "train.npy").resolve())
    train = load_split(cfg, "train")
    assert torch.equal(train.images, torch.from_numpy(images)) and train.labels.tolist() == [0] * 50
    floats = rng.random((40, 6, 5), dtype=np.float32)
    np.save(tmp_path / "float.npy", floats)
    cfg = DataConfig(name="array", path=str(tmp_path / "float.npy"), cache_dir=str(tmp_path / "cache"), test_fraction=0.25)
    prepare(cfg, ONE)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert len(train) + len(test) == 40 and len(test) > 0 and train.images.shape[1:] == (1, 6, 5)
    assert torch.equal(torch.cat([train.images, test.images]).sort(0).values[:, 0],
                       torch.from_numpy(np.rint(floats * 255).astype(np.uint8)).sort(0).values)


def test_models_take_the_data_shape() -> None:
    seed = build_model(ModelConfig(), (1, 28, 28))
    assert sum(p.numel() for p in seed.parameters()) == 219_891
    assert list(seed.state_dict()) == list(build_model(ModelConfig()).state_dict())
    for shape in [(3, 64, 64), (1, 17, 30), (3, 5, 9)]:
        for name in ("mlp", "conv"):
            model = build_model(ModelConfig(name=name), shape)
            assert model(torch.rand(2, *shape)).shape == (2, *shape)


def test_an_mlp_too_large_for_memory_says_what_it_costs() -> None:
    with pytest.raises(UsageError) as caught:
        check_model_fits(Config(data=DataConfig(name="folder", path="x")), (3, 4096, 4096))
    line = caught.value.lines()[0]
    assert "mlp at 3x4096x4096 has 12,935,251,939 weights: 207.0 GB" in line and "GB with gradients and Adam state" in line, line


def test_the_manifest_is_written_last_and_names_the_identity(photo_folder: Path, tmp_path: Path) -> None:
    cfg = folder_config(photo_folder, tmp_path / "cache")
    manifest = prepare(cfg, ONE)
    where = custom.location(cfg)
    assert json.loads((where / "manifest.json").read_text())["digest"] == manifest["digest"]
    moved = tmp_path / "moved"
    shutil.copytree(photo_folder, moved, symlinks=True)  # the same files elsewhere: another cache folder, same identity
    assert custom.location(replace(cfg, path=str(moved))) != where
    assert prepare(replace(cfg, path=str(moved)), ONE)["digest"] == manifest["digest"]
    assert prepare(replace(cfg, size=(20, 24)), ONE)["digest"] != manifest["digest"]
