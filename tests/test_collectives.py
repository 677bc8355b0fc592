"""The loop's collectives do not grow with the steps: one packed all-reduce every few steps, none between."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.commands import hook_env
from tests.helpers.processes import Job

# 100 steps in one epoch (6,400 synthetic images, global batch 64), no checkpoint before step 100
HUNDRED_STEPS = ["--config", "digits", "data.name=synthetic", "data.synthetic_train=6400", "data.synthetic_test=200",
                 "train.epochs=1", "train.max_steps=100", "checkpoint.every_steps=0", "run.progress=off", "wandb.mode=disabled"]


@pytest.mark.parametrize("log_every", [10, 1])
def test_collectives_per_100_steps_stay_few_whatever_train_log_every(tmp_path: Path, log_every: int) -> None:
    env = hook_env(tmp_path, "count_collectives", COUNT_FILE=str(tmp_path / "counts"))
    job = Job.start([*HUNDRED_STEPS, f"run.dir={tmp_path / 'run'}", f"train.log_every={log_every}"], tmp_path, nproc=2,
                    srun_like=True, env=env)
    assert job.wait() == [0, 0], job.output(0)[-2000:] + job.output(1)[-2000:]
    for rank in (0, 1):
        found = json.loads((tmp_path / f"counts.{rank}").read_text())
        total = sum(found["counts"].values())
        print(f"rank {rank}, train.log_every={log_every}: {total} collectives in {found['steps']} steps: {found['counts']}")
        assert found["steps"] == 100
        # the syncs (every 9 steps or fewer: 12 at least 100/9), the fold at step 100, the final barrier
        assert total <= 100 // 9 + 1 + 1 + 1 + 2, found
