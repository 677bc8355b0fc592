"""Weights & Biases monitoring, read back from the offline run files the trainer wrote.

    .venv/bin/python -m pytest tests/test_wandb.py

One W&B run per run folder: the logged keys, the pictures and the resolved config are in
it; across SIGKILLs and reruns it keeps one id with steps that only increase, nothing
dropped and nothing logged twice (metrics.jsonl too); no secret reaches any file.
"""

from __future__ import annotations

import os
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from ae_dist.config import WandbConfig
from ae_dist.monitor import wandb_run
from ae_dist.run.identity import wandb_group, wandb_name
from ae_dist.run.metrics import KIND_ORDER
from tests.helpers.commands import TINY, clean_env, run_train, wait_for
from tests.helpers.interrupted import interrupted_run
from tests.helpers.processes import Job
from tests.helpers.run_files import metrics, run_id
from tests.helpers.schedule import schedule
from tests.helpers.wandb_offline import merge_runs, read_run, read_runs

TRAIN_KEYS = {"train/loss", "train/lr", "train/epoch"}
EPOCH_KEYS = {"epoch/train_loss", "epoch/test_loss", "epoch/samples_per_s", "epoch/lr", "epoch/epoch"}
FAKE_KEY = "fakekey0123456789abcdef0123456789abcdef01"  # 40 characters, as a real W&B API key
FAKE_NETRC_KEY = "netrcsecret9876543210fedcba9876543210fedc"


TINY_STEPS = schedule(TINY)  # 3 epochs of 23 steps, a train record every 5


def rows(history: list[dict], keys: set[str]) -> dict[int, dict]:
    """History rows holding any of ``keys``, by step."""
    return {row["_step"]: row for row in history if keys & row.keys()}


# 4. what one uninterrupted run logs


def test_offline_run_holds_the_metrics_pictures_and_config(reference_runs):
    run_dir = reference_runs((), 1)
    runs = read_runs(run_dir / "wandb")
    assert len(runs) == 1
    run = runs[0]
    assert run.run_id == run_id(run_dir) and run.project == "ae-dist" and run.name == "run"

    records = metrics(run_dir)
    train = rows(run.history, TRAIN_KEYS)
    epochs = rows(run.history, EPOCH_KEYS)
    assert sorted(train) == [r["step"] for r in records if r["kind"] == "train"] == TINY_STEPS.logged()
    assert sorted(epochs) == [r["step"] for r in records if r["kind"] == "epoch"] == TINY_STEPS.epoch_ends()
    for record in records:  # same values as metrics.jsonl, under "<kind>/<name>"
        row = (train if record["kind"] == "train" else epochs)[record["step"]]
        for name, value in record.items():
            if name not in ("kind", "step"):
                assert row[f"{record['kind']}/{name}"] == pytest.approx(value, rel=1e-12), (record, name)
    assert all(row.keys() >= TRAIN_KEYS for row in train.values())
    assert all(row.keys() >= EPOCH_KEYS for row in epochs.values())

    assert sorted(run.images) == ["latent", "recon"]
    for step, row in epochs.items():  # a reconstruction grid and a latent scatter each epoch
        for key in ("recon", "latent"):
            image = row[key]
            assert image["_type"] == "image-file" and image["path"] in run.files, (step, key)
            assert (run.path.parent / "files" / image["path"]).stat().st_size > 1000
    assert {k: v for k, v in run.config.items() if k != "job"} == yaml.safe_load((run_dir / "config.yaml").read_text())


# 4. across SIGKILLs and reruns (tests/helpers/interrupted.py: killed after a checkpoint, mid-epoch,
# and inside a checkpoint write, then run to the end)


@pytest.mark.parametrize("nproc", [1, 2])
def test_killed_and_rerun_logs_one_run_with_every_step_once(nproc, reference_runs, tmp_path_factory):
    run = interrupted_run(tmp_path_factory, nproc)
    assert run.legs[-1].returncode == 0, run.legs[-1].stderr[-3000:]
    reference = read_runs(reference_runs((), nproc) / "wandb")[0]

    pieces = read_runs(run.run_dir / "wandb")  # one file per launch, oldest first
    assert len(pieces) == len(run.legs)
    # wandb-core keeps its file's records in memory until a 32 KiB block fills, so a killed
    # launch may leave a file that holds nothing; every file that holds a run is this one.
    assert {piece.run_id for piece in pieces if piece.run_id or piece.history} == {run_id(run.run_dir)}
    assert all(piece.path.name == f"run-{run_id(run.run_dir)}.wandb" for piece in pieces)
    steps = [step for piece in pieces for step in piece.steps]
    assert all(a < b for a, b in pairwise(steps)), steps  # across the files in time order
    merged = merge_runs(pieces)[run_id(run.run_dir)]
    for keys in (TRAIN_KEYS, EPOCH_KEYS):  # nothing dropped
        assert sorted(rows(merged.history, keys)) == sorted(rows(reference.history, keys))
    assert sorted(merged.images) == ["latent", "recon"]
    assert {k: v for k, v in merged.config.items() if k != "job"} == yaml.safe_load((run.run_dir / "config.yaml").read_text())
    # The records a killed launch never got into its file were logged by the next one.
    assert any("records again" in leg.stderr for leg in run.legs[1:]), [leg.stderr[-500:] for leg in run.legs]
    for leg in run.legs:
        assert "upload it with: wandb sync " in leg.stderr

    ours, theirs = metrics(run.run_dir), metrics(reference_runs((), nproc))
    assert [(r["step"], r["kind"]) for r in ours] == [(r["step"], r["kind"]) for r in theirs]
    if nproc == 1:  # the same numbers as well: training is bitwise the same
        assert [r.get("loss") for r in ours] == [r.get("loss") for r in theirs]
        assert [r.get("test_loss") for r in ours] == [r.get("test_loss") for r in theirs]
        train_losses = {row["_step"]: row["train/loss"] for row in merged.history if "train/loss" in row}
        assert train_losses == {r["step"]: r["loss"] for r in theirs if r["kind"] == "train"}


def test_epoch_train_loss_survives_a_mid_epoch_resume(reference_runs, tmp_path_factory):
    run = interrupted_run(tmp_path_factory, 1)
    ours, theirs = metrics(run.run_dir), metrics(reference_runs((), 1))
    assert [r.get("train_loss") for r in ours] == [r.get("train_loss") for r in theirs]


def test_logged_through_reads_what_the_offline_files_hold(reference_runs, tmp_path_factory):
    reference = reference_runs((), 1)
    assert wandb_run.offline_logged_through(reference / "wandb", run_id(reference)) == (TINY_STEPS.total, KIND_ORDER["epoch"])
    assert wandb_run.offline_logged_through(reference / "wandb", "otherid0") == (-1, -1)
    run = interrupted_run(tmp_path_factory, 1)
    assert wandb_run.offline_logged_through(run.run_dir / "wandb", run_id(run.run_dir)) == (TINY_STEPS.total, KIND_ORDER["epoch"])


def test_logged_through_stops_where_a_killed_run_file_ends(tmp_path):
    # A file cut where wandb-core had got to when it was killed: some blocks on disk, the rest lost.
    logger = Job.command([[sys.executable, "-m", "tests.helpers.programs.wandb_log_until_killed", str(tmp_path / "w"),
                           "killed01", "3000"]], tmp_path)

    def logged() -> bool:
        logger.check_running()
        return "logged" in logger.stdout()

    wait_for(logged, 120, "the logging process to log its steps")
    files = list(tmp_path.glob("w/wandb/offline-run-*/run-killed01.wandb"))
    assert len(files) == 1
    wait_for(lambda: files[0].stat().st_size > wandb_run.WANDB_LOG_BLOCK, 60, "a first 32 KiB block on disk")
    logger.kill()  # the process and wandb-core, at once
    on_disk = read_run(files[0]).steps
    assert 0 < len(on_disk) < 3000 and on_disk == list(range(len(on_disk)))
    assert wandb_run.offline_logged_through(tmp_path / "w" / "wandb", "killed01") == (on_disk[-1], 0)


# 5. no secret in any file


def test_api_key_and_netrc_never_reach_a_file(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_NETRC_KEY}\n")
    netrc.chmod(0o600)
    env = clean_env(tmp_path, WANDB_API_KEY=FAKE_KEY)
    run_dir = tmp_path / "run"
    done = run_train([*TINY, f"run.dir={run_dir}", "train.epochs=1", "wandb.mode=offline"], tmp_path, env=env)
    assert read_runs(run_dir / "wandb")[0].steps  # W&B did write its run

    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and p != netrc]
    assert any(p.suffix == ".wandb" for p in written) and any(p.name == "debug.log" for p in written)
    assert any((tmp_path / "wandb-home").rglob("*"))  # the W&B cache/config dirs are searched too
    for secret in (FAKE_KEY, FAKE_NETRC_KEY):
        assert [p for p in written if secret.encode() in p.read_bytes()] == []
        assert secret not in done.stdout + done.stderr


# the mode when wandb.mode is unset, and the run's group and name


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("WANDB_", "SLURM_", "TORCHELASTIC_")) or name == "NETRC":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def write_netrc(path: Path, host: str = "api.wandb.ai") -> Path:
    path.write_text(f"machine {host}\n  login user\n  password {FAKE_NETRC_KEY}\n")
    path.chmod(0o600)
    return path


@pytest.mark.fast
def test_mode_without_credentials_is_offline(no_wandb_env):
    assert not wandb_run.has_wandb_credentials()
    assert wandb_run.wandb_mode("") == "offline"


@pytest.mark.fast
def test_mode_with_credentials_is_online(no_wandb_env, tmp_path):
    no_wandb_env.setenv("WANDB_API_KEY", FAKE_KEY)
    assert wandb_run.wandb_mode("") == "online"
    no_wandb_env.delenv("WANDB_API_KEY")
    write_netrc(tmp_path / ".netrc")
    assert wandb_run.wandb_mode("") == "online"
    no_wandb_env.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a key for another host does not count
    assert wandb_run.wandb_mode("") == "offline"
    no_wandb_env.setenv("NETRC", str(write_netrc(tmp_path / "other-netrc", "wandb.example.org")))
    assert wandb_run.wandb_mode("") == "online"


@pytest.mark.fast
def test_configured_mode_then_wandb_mode_variable_win(no_wandb_env):
    no_wandb_env.setenv("WANDB_API_KEY", FAKE_KEY)
    no_wandb_env.setenv("WANDB_MODE", "offline")  # a node without network: credentials, but offline
    assert wandb_run.wandb_mode("") == "offline"
    assert wandb_run.wandb_mode("disabled") == "disabled"
    no_wandb_env.setenv("WANDB_MODE", "dryrun")
    assert wandb_run.wandb_mode("") == "offline"
    assert wandb_run.wandb_mode("online") == "online"


@pytest.mark.fast
@pytest.mark.parametrize(("env", "group", "name"), [
    ({}, None, "exp1"),
    ({"SLURM_JOB_ID": "4242"}, "slurm-4242", "exp1-4242"),
    ({"SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7"}, "slurm-4242", "exp1-4242-7"),
    ({"TORCHELASTIC_RUN_ID": "a1b2c3"}, "torchrun-a1b2c3", "exp1"),
    ({"TORCHELASTIC_RUN_ID": "none"}, None, "exp1"),
    ({"SLURM_JOB_ID": "4242", "TORCHELASTIC_RUN_ID": "a1b2c3"}, "slurm-4242", "exp1-4242"),
])
def test_run_group_and_name(no_wandb_env, tmp_path, env, group, name):
    for key, value in env.items():
        no_wandb_env.setenv(key, value)
    assert group_and_name(WandbConfig(), tmp_path / "exp1") == (group, name)
    assert group_and_name(WandbConfig(group="g", name="n"), tmp_path / "exp1") == ("g", "n")


def group_and_name(cfg: WandbConfig, root: Path) -> tuple[str | None, str]:
    """The W&B group (None: no group) and run name the trainer gives a run in ``root``."""
    return wandb_group(cfg.group) or None, wandb_name(cfg.name, root)


def test_torchrun_run_is_grouped_by_its_run_id(reference_runs):
    run = read_runs(reference_runs((), 2) / "wandb")[0]
    assert run.group.startswith("torchrun-") and len(run.group) > len("torchrun-")
    assert run.name == "run"
