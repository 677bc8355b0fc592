"""The offline .wandb reader against real wandb offline runs, made in subprocesses.

Each `wandb.init` runs in its own Python process, as a trainer restart would: the
first one logs steps 0-2 (and an image), the second resumes the same id and logs
steps 3-5 plus a stale step that wandb drops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from ae_dist.monitor.wandb_run import WANDB_LOG_BLOCK
from tests.helpers.commands import REPO
from tests.helpers.wandb_offline import (
    find_wandb_files,
    merge_runs,
    read_records,
    read_run,
    read_runs,
)

RUN_ID = "aetest01"
FAKE_KEY = "fake-secret-1234567890abcdef1234567890abcdef12345678"
LONG_TEXT = "0123456789abcdef" * 5000  # 80 KB: the run record spans 3 log blocks
CONFIG = {"optim": {"lr": 0.01}, "train": {"batch_size": 32}, "long_text": LONG_TEXT}

FAST = {  # no system monitor process, no stdout capture, no environment record
    "x_disable_stats": True,
    "x_disable_meta": True,
    "console": "off",
    "x_save_requirements": False,
    "disable_git": True,
}


def _session(root: Path, **args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root),
        "WANDB_CACHE_DIR": str(root / "cache"),
        "WANDB_CONFIG_DIR": str(root / "config"),
        "WANDB_DATA_DIR": str(root / "data"),
        "WANDB_API_KEY": FAKE_KEY,
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.programs.wandb_session", json.dumps(args)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wandb")
    _session(root, id=RUN_ID, config=CONFIG, steps=[0, 1, 2], image_step=2, settings={})
    # Resumed process: step 2 after step 4 is stale and must be dropped.
    resumed = _session(root, id=RUN_ID, config={}, steps=[3, 4, 2, 5], settings=FAST)
    assert "less than the current step" in resumed.stderr
    return root


def test_finds_one_file_per_session(root: Path) -> None:
    files = find_wandb_files(root)
    assert len(files) == 2
    assert all(f.name == f"run-{RUN_ID}.wandb" for f in files)
    assert len({f.parent for f in files}) == 2  # a new offline-run-* folder per init


def test_read_records_reassembles_blocks(root: Path) -> None:
    first = read_runs(root)[0].path
    assert first.stat().st_size > 2 * WANDB_LOG_BLOCK
    records = read_records(first)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds[0] == "header" and "run" in kinds and kinds[-1] == "exit"
    run = records[kinds.index("run")].run
    assert run.run_id == RUN_ID and run.project == "ae-test"


def test_first_session(root: Path) -> None:
    run = read_runs(root)[0]
    assert (run.run_id, run.project, run.group, run.name) == (
        RUN_ID,
        "ae-test",
        "g1",
        "first",
    )
    assert run.config == CONFIG
    assert run.steps == [0, 1, 2]
    assert {"train/loss", "epoch", "_step"} <= run.history[0].keys()
    assert run.history[1]["train/loss"] == pytest.approx(0.5)
    assert run.images == ["recon"]
    image = run.history[2]["recon"]
    assert image["_type"] == "image-file" and image["width"] == 8
    assert image["path"] in run.files
    assert (run.path.parent / "files" / image["path"]).is_file()
    assert run.summary["train/loss"] == pytest.approx(1 / 3)
    assert read_run(run.path.parent) == run  # a run folder works as well as its file


def test_resume_continues_the_same_run(root: Path) -> None:
    first, second = read_runs(root)
    assert first.start_time < second.start_time
    assert second.run_id == RUN_ID and second.images == []
    assert second.steps == [3, 4, 5]  # the stale step 2 was dropped
    merged = merge_runs([first, second])
    assert list(merged) == [RUN_ID]
    steps = merged[RUN_ID].steps
    assert steps == [0, 1, 2, 3, 4, 5]
    assert all(a < b for a, b in pairwise(steps))
    assert merged[RUN_ID].config == CONFIG
    assert merged[RUN_ID].images == ["recon"]


def test_api_key_is_not_written(root: Path) -> None:
    written = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "requirements.txt" for p in written)  # default settings ran
    assert [p for p in written if FAKE_KEY.encode() in p.read_bytes()] == []


def test_damaged_file_is_reported(root: Path, tmp_path: Path) -> None:
    data = bytearray(read_runs(root)[1].path.read_bytes())
    data[40] ^= 0xFF
    damaged = tmp_path / "run-x.wandb"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad checksum"):
        read_records(damaged)
    damaged.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a W&B log"):
        read_records(damaged)
