"""Preparation and training on a real photo folder, in real processes: torchrun 2, kill -9, two at once, resume."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks.idx_files import write_fashion_mnist
from tests.helpers.commands import PYTHON, assert_bitwise_equal, clean_env, hook_env, load_weights, wait_for
from tests.helpers.photos import BAD
from tests.helpers.processes import Job
from tests.helpers.run_files import logged_steps

FINAL_LINE = re.compile(r"^(\d+) images, (\d+) skipped, [\d.]+ seconds, \d+ images/s", re.MULTILINE)


def prepare_cmd(args: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [PYTHON, "-m", "ae_dist.prepare", *args]
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "ae_dist.prepare",
            *args]


def folder_args(photos: Path, cache: Path) -> list[str]:
    return ["data.name=folder", f"data.path={photos}", f"data.cache_dir={cache}", "data.size=16,16", "data.channels=3"]


def prepared_dir(cache: Path) -> Path:
    (found,) = [p for p in cache.glob("folder-*") if "." not in p.name]
    return found


def same_bytes(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes()
               for name in ("train.npy", "test.npy", "train-labels.npy", "test-labels.npy"))


def test_prepare_under_torchrun_2_gives_the_bytes_of_1_rank(photo_folder: Path, tmp_path: Path) -> None:
    jobs = {n: Job.command([prepare_cmd(folder_args(photo_folder, tmp_path / f"cache{n}"), n)], tmp_path, name=f"p{n}")
            for n in (1, 2)}
    for job in jobs.values():
        assert job.wait() == [0], job.output()
        out, err = job.stdout(), job.stderr()
        count, skipped = map(int, FINAL_LINE.findall(out)[-1])
        assert skipped == len(BAD) and count > 80, out
        warnings = [line for line in err.splitlines() if line.startswith("warning:") and "skipped" in line]
        assert len(warnings) == 1 and f"{len(BAD)} files skipped" in warnings[0], err
        assert "Traceback" not in err
    assert same_bytes(prepared_dir(tmp_path / "cache1"), prepared_dir(tmp_path / "cache2"))


def test_a_killed_preparation_leaves_nothing_complete_and_the_rerun_matches(photo_folder: Path, tmp_path: Path) -> None:
    args = folder_args(photo_folder, tmp_path / "cache")
    job = Job.command([prepare_cmd(args)], tmp_path, [hook_env(tmp_path, "slow_decode", SLOW_DECODE_S="0.1")], name="k")
    job.kill_when(lambda: "decoded 10\n" in job.stderr(), "10 images decoded")
    assert [p.name for p in (tmp_path / "cache").glob("folder-*") if "." not in p.name] == []
    assert list((tmp_path / "cache").glob("folder-*.partial-*"))  # the work folder of the killed run
    train = Job.start([*args, "model.name=conv", "train.epochs=1", "train.batch_size=8", f"run.dir={tmp_path / 'run'}",
                       "wandb.mode=disabled"], tmp_path, name="t")  # the trainer prepares what is missing
    assert train.wait() == [0], train.output()
    assert "left by a preparation that did not finish" in train.stdout()
    assert not list((tmp_path / "cache").glob("folder-*.partial-*"))
    again = Job.command([prepare_cmd(folder_args(photo_folder, tmp_path / "fresh"))], tmp_path, name="f")
    assert again.wait() == [0], again.output()
    assert same_bytes(prepared_dir(tmp_path / "cache"), prepared_dir(tmp_path / "fresh"))


def test_two_preparations_at_once_one_works_the_other_waits(photo_folder: Path, tmp_path: Path) -> None:
    args = folder_args(photo_folder, tmp_path / "cache")
    go = tmp_path / "go"
    first = Job.command([prepare_cmd(args)], tmp_path, [hook_env(tmp_path, "slow_decode", SLOW_DECODE_S="0",
                                                                 DECODE_AFTER=str(go))], name="a")
    wait_for(lambda: "decoded 1\n" in first.stderr(), 240, "the first preparation decoding")
    second = Job.command([prepare_cmd(args)], tmp_path, name="b")
    wait_for(lambda: "waiting:" in second.stdout(), 240, "the second preparation waiting")
    go.touch()
    assert second.wait() == [0] and first.wait() == [0], first.output() + second.output()
    assert "up to date" in second.stdout() and FINAL_LINE.search(first.stdout())
    assert "decoded" not in second.stderr()


def train_args(photos: Path, cache: Path, run_dir: Path, *more: str) -> list[str]:
    return [*folder_args(photos, cache), "model.name=conv", "train.epochs=2", "train.batch_size=8",
            "checkpoint.every_steps=4", "train.log_every=2", "wandb.mode=disabled", "run.progress=lines",
            f"run.dir={run_dir}", *more]


@pytest.fixture(scope="module")
def folder_runs(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same folder training: 1 rank, 2 ranks (torchrun), and 1 rank killed (-9) mid-epoch then rerun."""
    tmp = tmp_path_factory.mktemp("folder-runs")
    cache = tmp / "cache"
    runs = {name: tmp / name for name in ("one", "two", "killed")}
    one = Job.start(train_args(photo_folder, cache, runs["one"]), tmp, name="one")
    assert one.wait() == [0], one.output()
    two = Job.start(train_args(photo_folder, cache, runs["two"]), tmp, nproc=2, name="two")
    assert two.wait() == [0], two.output()
    args = train_args(photo_folder, cache, runs["killed"])
    killed = Job.start(args, tmp, env=hook_env(tmp, "slow_steps", SLOW_STEP_S="0.3"), name="kill")
    killed.kill_when(lambda: max(logged_steps(runs["killed"]), default=0) >= 6, "step 6 in metrics.jsonl")
    rerun = Job.start(args, tmp, name="rerun")
    assert rerun.wait() == [0], rerun.output()
    assert "resumed from" in rerun.stdout()
    return runs


def test_folder_training_is_world_size_invariant(folder_runs: dict[str, Path]) -> None:
    one, two = load_weights(folder_runs["one"] / "model.pt"), load_weights(folder_runs["two"] / "model.pt")
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=1e-4, atol=1e-6), key


def test_folder_training_killed_mid_epoch_resumes_bitwise(folder_runs: dict[str, Path]) -> None:
    assert_bitwise_equal(load_weights(folder_runs["one"] / "model.pt"), load_weights(folder_runs["killed"] / "model.pt"))


def test_resuming_on_other_data_is_a_config_change_but_a_moved_folder_is_not(folder_runs: dict[str, Path],
                                                                             photo_folder: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(folder_runs["one"], run_dir)
    cache = tmp_path / "cache"
    other = Job.start(train_args(photo_folder, cache, run_dir, "train.epochs=3", "data.fit=pad"), tmp_path, name="o")
    assert other.wait() == [2], other.output()
    assert "data.digest" in other.stderr() and "train.resume=changed" in other.stderr()
    moved = tmp_path / "moved"
    shutil.copytree(photo_folder, moved, symlinks=True)
    same = Job.start(train_args(moved, cache, run_dir, "train.epochs=3"), tmp_path, name="m")
    assert same.wait() == [0], same.output()
    assert "resumed from" in same.stdout()


def test_fashion_mnist_files_prepared_then_trained_as_arrays_are_bitwise_the_built_in_run(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "data", train=256, test=64)
    source = ["data.name=fashion_mnist", f"data.root={tmp_path / 'data'}", "data.download=false"]
    common = ["train.epochs=2", "train.batch_size=32", "wandb.mode=disabled"]
    prep = Job.command([prepare_cmd([*source, f"data.cache_dir={tmp_path / 'cache'}"])], tmp_path, name="p")
    assert prep.wait() == [0], prep.output()
    (where,) = [p for p in (tmp_path / "cache").glob("fashion_mnist-*") if "." not in p.name]
    built_in = Job.start([*source, *common, f"run.dir={tmp_path / 'a'}"], tmp_path, name="a")
    arrays = Job.start(["data.name=array", f"data.path={where / 'train.npy'}", f"data.labels={where / 'train-labels.npy'}",
                        f"data.test_path={where / 'test.npy'}", f"data.test_labels={where / 'test-labels.npy'}",
                        f"data.cache_dir={tmp_path / 'cache'}", *common, f"run.dir={tmp_path / 'b'}"], tmp_path, name="b")
    assert built_in.wait() == [0] and arrays.wait() == [0], built_in.output() + arrays.output()
    assert_bitwise_equal(load_weights(tmp_path / "a" / "model.pt"), load_weights(tmp_path / "b" / "model.pt"))


def test_bad_array_from_the_command_line_is_one_error_line(tmp_path: Path) -> None:
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((10, 8, 8), np.int32))
    job = Job.command([prepare_cmd(["data.name=array", f"data.path={tmp_path / 'x.npy'}",
                                    f"data.cache_dir={tmp_path / 'c'}"])], tmp_path, [clean_env(tmp_path)])
    assert job.wait() == [2]
    lines = job.stderr().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: images of dtype int32 (data.path="), lines


def test_evaluate_draws_colour_pictures_of_a_folder_run(folder_runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(folder_runs["one"], run_dir)
    job = Job.command([[PYTHON, "-m", "ae_dist.evaluate", str(run_dir)]], tmp_path, name="e")
    assert job.wait() == [0], job.output()
    assert re.search(r"test loss [\d.]+ \(\d+ images, model\.pt", job.stdout())
    assert {"recon.png", "latent.png"} <= {p.name for p in (run_dir / "eval").iterdir()}
