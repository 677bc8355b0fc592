"""The data preparation as a 2-node SLURM job (the local cluster): split across both nodes, the bytes of 1 rank."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.commands import PYTHON, REPO, clean_env
from tests.helpers.launcher import last_record, run_launch
from tests.helpers.processes import Job
from tests.helpers.slurm import SlurmCluster
from tests.test_prepare_runs import FINAL_LINE, folder_args, prepare_cmd, prepared_dir, same_bytes

pytestmark = pytest.mark.slurm
JOB = ("--cluster", "local", "--nodes", "2", "--cpus-per-task", "1", "--time", "10", "--wait")


@pytest.fixture
def shared_cache(tmp_path: Path):
    """A cache folder both nodes see and that is not node-local (/tmp is refused for a 2-node job)."""
    folder = REPO / "data" / "test-prepared" / tmp_path.name
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_launch_prepare_on_two_nodes_then_train(slurm_cluster: SlurmCluster, photo_folder: Path, tmp_path: Path,
                                                shared_cache: Path) -> None:
    env = clean_env(tmp_path, SLURM_CONF=str(slurm_cluster.slurm_conf), AE_DIST_PYTHON=PYTHON)
    refused = run_launch(["prepare", *JOB, *folder_args(photo_folder, tmp_path / "local-cache")], tmp_path, env)
    assert refused.returncode != 0 or "node-local" in (refused.stdout + refused.stderr)
    result = run_launch(["prepare", *JOB, *folder_args(photo_folder, shared_cache)], tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    record = last_record(tmp_path)
    logs = [Path(path).read_text() for path in record.runs[0].logs]
    assert any("on " in log and "prepare task 1/2" in log for log in logs)
    assert FINAL_LINE.search(logs[0]), logs[0][-2000:]
    one = Job.command([prepare_cmd(folder_args(photo_folder, tmp_path / "one-rank"))], tmp_path, name="one")
    assert one.wait() == [0], one.output()
    assert same_bytes(prepared_dir(shared_cache), prepared_dir(tmp_path / "one-rank"))
    train = run_launch([*JOB[2:], "--cluster", "local", *folder_args(photo_folder, shared_cache), "model.name=conv",
                        "train.epochs=1", "train.batch_size=8", "train.threads=1", f"run.dir={tmp_path / 'run'}",
                        "wandb.mode=disabled"], tmp_path, env)
    assert train.returncode == 0, train.stdout + train.stderr
    assert (tmp_path / "run" / "model.pt").exists()
