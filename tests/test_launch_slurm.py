"""The launchers on the real local SLURM cluster (slurm/cluster.sh, two nodes with their own
hostnames): 2-node training through submitit and through `sbatch slurm/train.sbatch`, requeue
on the pre-timeout signal with an exact resume, a sweep as a job array, impossible requests.

    /work/main/.venv/bin/python -m pytest tests/test_launch_slurm.py -q    # as root
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from launch.jobs import sacct_rows
from tests.helpers.commands import PYTHON, REPO, TINY, assert_bitwise_equal, clean_env, load_weights, wait_for
from tests.helpers.launcher import last_record, run_launch
from tests.helpers.run_files import epoch_records, has_logged_a_step, run_id
from tests.helpers.slurm import SlurmCluster
from tests.helpers.wandb_offline import merge_runs, read_runs

pytestmark = pytest.mark.slurm

THREADS = ("train.threads=1",)  # as in the torchrun reference: bitwise comparable
LONGER = ("train.epochs=6", *THREADS)  # 6 epochs of 23 steps: room for the signal to arrive mid-training
JOB = ("--cpus-per-task", "1", "--time", "10")
RUN_FILES = {"config.yaml", "metrics.jsonl", "model.pt", "recon.png", "latent.png", "loss.png", "run.json", "checkpoints"}
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


@pytest.fixture
def env(slurm_cluster: SlurmCluster, tmp_path: Path) -> dict[str, str]:
    """A clean environment that reaches the cluster; W&B offline, inside tmp_path."""
    return clean_env(tmp_path, SLURM_CONF=str(slurm_cluster.slurm_conf), AE_DIST_PYTHON=PYTHON)


def sbatch(tmp: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                             "--time=10", f"--output={tmp}/slurm-%j.out", str(REPO / "slurm" / "train.sbatch"), *args],
                            cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def states(cluster: SlurmCluster, job_id: str) -> list[str]:
    """Every instance of the job, oldest first (a requeued instance shows as REQUEUED)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(cluster.slurm_conf))
        return [row["State"] for row in sacct_rows(job_id)]


def wait_ended(cluster: SlurmCluster, job_id: str, timeout: float = 300) -> list[str]:
    """Until the job has left the queue for good and sacct says how it ended."""
    def ended() -> list[str] | None:
        if cluster.run(["squeue", "-h", "-j", job_id], check=False).stdout.strip():
            return None
        rows = states(cluster, job_id)
        return rows if rows and rows[-1] in ENDED else None

    return wait_for(ended, timeout, f"job {job_id} to end")


def assert_complete(run_dir: Path) -> None:
    assert {p.name for p in run_dir.iterdir()} >= RUN_FILES, sorted(p.name for p in run_dir.iterdir())
    epochs = epoch_records(run_dir)
    assert [r["epoch"] for r in epochs] == list(range(1, len(epochs) + 1)) and epochs


def assert_one_wandb_run(run_dir: Path, starts: int) -> None:
    pieces = read_runs(run_dir / "wandb")
    assert len(pieces) == starts  # one offline-run folder per start of the trainer
    (merged,) = merge_runs(pieces).values()
    assert merged.run_id == run_id(run_dir)
    assert merged.steps == sorted(set(merged.steps))  # nothing logged twice across the requeue


@pytest.mark.compat
def test_two_node_submitit_job_matches_torchrun(slurm_cluster: SlurmCluster, tmp_path: Path, env, reference_runs) -> None:
    reference = reference_runs(THREADS, nproc=2)
    result = run_launch(["--nodes", "2", *JOB, "--wait", *TINY, *THREADS, "run.dir=run"], tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    record = last_record(tmp_path)
    assert states(slurm_cluster, record.job_id) == ["COMPLETED"]
    hosts = {}
    for log in record.runs[0].logs:
        rank, host = re.search(r"ae-dist task (\d+)/2 on (\S+)", Path(log).read_text()).groups()
        hosts[int(rank)] = host
    assert hosts == {0: "aenode1", 1: "aenode2"} or hosts == {0: "aenode2", 1: "aenode1"}
    run_dir = tmp_path / "run"
    assert_complete(run_dir)
    ours, theirs = load_weights(run_dir / "model.pt"), load_weights(reference / "model.pt")
    assert list(ours) == list(theirs)
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) <= 1e-4
    assert f"submitted job {record.job_id}" in result.stdout and record.runs[0].wandb_run_id in result.stdout


def test_two_node_sbatch_job_matches_torchrun(slurm_cluster: SlurmCluster, tmp_path: Path, env, reference_runs) -> None:
    reference = reference_runs(THREADS, nproc=2)
    job_id = sbatch(tmp_path, env, *TINY, *THREADS, f"run.dir={tmp_path / 'run'}")
    assert wait_ended(slurm_cluster, job_id) == ["COMPLETED"]
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    hosts = dict(re.findall(r"(\d+): (aenode\d)", re.search(r"task hosts \(rank: host\): (.*)", log).group(1)))
    assert sorted(hosts) == ["0", "1"] and hosts["0"] != hosts["1"], log
    assert_complete(tmp_path / "run")
    ours, theirs = load_weights(tmp_path / "run" / "model.pt"), load_weights(reference / "model.pt")
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) <= 1e-4


def test_submitit_job_requeued_on_the_pre_timeout_signal_resumes_exactly(
        slurm_cluster: SlurmCluster, tmp_path: Path, env, reference_runs) -> None:
    reference = reference_runs(LONGER, nproc=2)
    run_dir = tmp_path / "run"
    result = run_launch(["--nodes", "2", *JOB, *TINY, *LONGER, "run.dir=run"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    job_id = last_record(tmp_path).job_id
    try:
        wait_for(lambda: has_logged_a_step(run_dir), 180, "the first logged training step")
        slurm_cluster.run(["scancel", "--signal=USR2", job_id])  # what --signal=USR2@120 sends before the limit
        logs = run_launch(["logs", job_id], tmp_path, env)  # follows until the job has ended
    finally:
        slurm_cluster.run(["scancel", job_id], check=False)
    rows = wait_ended(slurm_cluster, job_id)
    assert rows[0] == "REQUEUED" and rows[-1] == "COMPLETED", rows
    assert re.search(r"stopped by signal 12 at step (\d+)", logs.stdout), logs.stdout
    assert "requeueing job" in logs.stdout and "resumed from" in logs.stdout and "done:" in logs.stdout
    assert_complete(run_dir)
    assert_bitwise_equal(load_weights(reference / "model.pt"), load_weights(run_dir / "model.pt"))
    assert_one_wandb_run(run_dir, starts=2)


def test_sbatch_job_requeued_on_the_pre_timeout_signal_resumes_exactly(
        slurm_cluster: SlurmCluster, tmp_path: Path, env, reference_runs) -> None:
    reference = reference_runs(LONGER, nproc=2)
    run_dir = tmp_path / "run"
    job_id = sbatch(tmp_path, env, *TINY, *LONGER, f"run.dir={run_dir}")
    try:
        wait_for(lambda: has_logged_a_step(run_dir), 180, "the first logged training step")
        slurm_cluster.run(["scancel", "--signal=USR1", job_id])  # what --signal=USR1@120 sends before the limit
        rows = wait_ended(slurm_cluster, job_id)
    finally:
        slurm_cluster.run(["scancel", job_id], check=False)
    assert rows[0] == "REQUEUED" and rows[-1] == "COMPLETED", rows
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "stopped by signal 10" in log and "requeueing job" in log and "(restart 1)" in log, log
    assert "resumed from" in log
    assert_complete(run_dir)
    assert_bitwise_equal(load_weights(reference / "model.pt"), load_weights(run_dir / "model.pt"))
    assert_one_wandb_run(run_dir, starts=2)


def test_sweep_is_one_job_array(slurm_cluster: SlurmCluster, tmp_path: Path, env) -> None:
    result = run_launch(["--sweep", "optim.lr=1e-3,3e-3", *JOB, "--wait", *TINY, "train.epochs=1", "run.dir=sweep"],
                        tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    record = last_record(tmp_path)
    assert [run.job_id for run in record.runs] == [f"{record.job_id}_0", f"{record.job_id}_1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(slurm_cluster.slurm_conf))
        rows = {row["JobID"]: row["State"] for row in sacct_rows(record.job_id)}
    assert rows == {f"{record.job_id}_0": "COMPLETED", f"{record.job_id}_1": "COMPLETED"}
    folders = sorted((tmp_path / "sweep").glob("optim.lr=*"))
    assert [f.name for f in folders] == ["optim.lr=1e-3", "optim.lr=3e-3"]
    configs = [yaml.safe_load((f / "config.yaml").read_text()) for f in folders]
    assert [c["optim"]["lr"] for c in configs] == [1e-3, 3e-3]
    assert {c["run"]["dir"] for c in configs} == {str(f) for f in folders}
    for folder in folders:
        assert_complete(folder)
    runs = [merge_runs(read_runs(folder / "wandb")) for folder in folders]
    assert len({next(iter(r)) for r in runs}) == 2  # two W&B runs ...
    assert {next(iter(r.values())).group for r in runs} == {"sweep-sweep"}  # ... in one group
    assert not torch.equal(load_weights(folders[0] / "model.pt")["encoder.0.weight"],
                           load_weights(folders[1] / "model.pt")["encoder.0.weight"])


def test_partition_not_listed_by_sinfo(slurm_cluster: SlurmCluster, tmp_path: Path, env) -> None:
    result = run_launch(["--partition", "nosuch", *TINY, "run.dir=run"], tmp_path, env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: partition 'nosuch' is not listed by sinfo (--partition): use one of "
        f"{', '.join(sorted(p.rstrip('*') for p in slurm_cluster.partitions))}"]
    assert not (tmp_path / "run").exists()
