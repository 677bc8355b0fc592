"""One notion of "complete" (`ae_dist.run.completion`): the record the trainer's wrap-up writes and a continuation
clears, read by the trainer, the elastic `settle` and `launch status`; model.pt alone says nothing.

    /work/main/.venv/bin/python -m pytest tests/test_completion.py -q
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from ae_dist.config import load_config
from ae_dist.run import completion
from ae_dist.run.folder import RunDir
from launch import jobs
from launch.requeue import settle
from tests.helpers.commands import TINY, hook_env, wait_for
from tests.helpers.processes import Job
from tests.helpers.schedule import schedule

TRAIN = load_config(TINY[1], TINY[2:]).train  # 3 epochs


def copy_run(source: Path, tmp: Path) -> Path:
    run_dir = tmp / "run"
    shutil.copytree(source, run_dir, symlinks=True)
    return run_dir


@pytest.fixture(autouse=True)
def _sigterm_as_it_was() -> object:
    """settle's requeue ignores SIGTERM (the requeue stops the batch script); put it back for the next test."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def fake_scontrol(tmp: Path, monkeypatch) -> Path:
    """An scontrol that records what it was asked (requeue, update) and shows nothing."""
    bin_dir, calls = tmp / "bin", tmp / "scontrol-calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\n[ "$1" = show ] && exit 0\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(shutil.which('sh')).parent}")
    return calls


@pytest.mark.fast
def test_the_record_decides_for_the_targets_it_reached(tmp_path: Path) -> None:
    folder = RunDir(tmp_path)
    assert not completion.is_complete(folder)
    (tmp_path / "model.pt").write_bytes(b"weights")  # weights alone: not complete
    assert not completion.is_complete(folder)
    completion.write(folder, TRAIN, epoch=3, step=69)
    assert completion.is_complete(folder) and completion.is_complete(folder, TRAIN)
    longer = load_config(TINY[1], [*TINY[2:], "train.epochs=200"]).train
    assert not completion.is_complete(folder, longer)  # a continuation's target is not reached
    early = load_config(TINY[1], [*TINY[2:], "train.max_steps=40"]).train
    completion.write(folder, early, epoch=1, step=40)  # an early stop is a completion too
    assert completion.is_complete(folder, early) and not completion.is_complete(folder, TRAIN)
    assert json.loads(folder.complete.read_text())["max_steps"] == 40
    completion.clear(folder)
    assert not completion.is_complete(folder) and (tmp_path / "model.pt").exists()
    folder.complete.write_text("{torn")  # a record a kill left half-written
    assert not completion.is_complete(folder)


def test_a_continuation_stopped_by_a_signal_is_requeued_not_complete(reference_runs, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """A finished run continued with a larger train.epochs, stopped by the pre-timeout signal: the trainer cleared
    the record at the continuation's start, so settle requeues (model.pt of the first 3 epochs notwithstanding)
    and status does not call it complete."""
    reference = reference_runs((), 1)
    run_dir = copy_run(reference, tmp_path)
    folder = RunDir(run_dir)
    assert completion.read(folder)["epoch"] == 3 and completion.read(folder)["step"] == schedule(TINY).total
    assert jobs.run_complete(str(run_dir)) and "complete (model.pt written)" in jobs.progress(str(run_dir))
    args = [*TINY, f"run.dir={run_dir}", "train.epochs=4", "wandb.mode=disabled"]
    job = Job.start(args, tmp_path, env=hook_env(tmp_path, "slow_steps", SLOW_STEP_S="0.5"))
    wait_for(lambda: "slow step 1:" in job.stderr(), 240, "the continuation's first step")
    job.signal(signal.SIGUSR1)
    assert job.wait() == [75], job.output()
    assert not folder.complete.exists() and folder.model.exists()
    assert not jobs.run_complete(str(run_dir)) and "complete" not in jobs.progress(str(run_dir))

    calls = fake_scontrol(tmp_path, monkeypatch)
    env = {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0"}
    assert settle(75, run_dir, max_node_failures=2, max_requeues=None, env=env) == 0
    assert calls.read_text().splitlines() == ["requeue 77"]  # requeued, not "run complete"



def test_settle_with_the_jobs_own_targets_sees_a_stale_record(tmp_path: Path, monkeypatch) -> None:
    """The sbatch script passes the trainer's arguments: their train.epochs decides, even before the trainer has
    cleared the record (a stop during start-up)."""
    folder = RunDir(tmp_path)
    completion.write(folder, TRAIN, epoch=3, step=69)
    calls = fake_scontrol(tmp_path, monkeypatch)
    env = {"SLURM_JOB_ID": "78", "SLURM_RESTART_COUNT": "0"}
    longer = load_config(TINY[1], [*TINY[2:], "train.epochs=200"]).train
    assert settle(75, tmp_path, max_node_failures=2, max_requeues=None, env=env, train=longer) == 0
    assert calls.read_text().splitlines() == ["requeue 78"]
    assert settle(0, tmp_path, max_node_failures=2, max_requeues=None, env=env, train=TRAIN) == 0
    assert calls.read_text().splitlines() == ["requeue 78"]
