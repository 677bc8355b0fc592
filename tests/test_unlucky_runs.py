"""Unlucky timing and unlucky input for the trainer: stop signals outside the step loop, a batch
larger than the data, ranks that see different run folders, checkpoints that do not fit.

Real processes throughout; the SLURM cases run on the local cluster (slurm/cluster.sh).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from test_launch_slurm import sbatch, states, wait_ended
from test_run_folder import SLOW_START, handles, same_weights

from ae_dist.dist.group import free_port
from ae_dist.errors import EXIT_PREEMPTED, EXIT_USAGE
from tests.helpers.commands import PYTHON, REPO, TINY, clean_env, hook_env, run_train, train_cmd, wait_for
from tests.helpers.faults import one_clear_line, report
from tests.helpers.processes import Job
from tests.helpers.run_files import checkpoint_steps

# Stop signals before the first step and after the last epoch ------------------------------------

def test_sigusr1_during_start_up_exits_75_and_the_rerun_trains(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, *SLOW_START, f"run.dir={run_dir}", "train.max_steps=20"]
    job = Job.start(args, tmp_path)
    pid = job.procs[0].pid
    wait_for(lambda: handles(pid, signal.SIGUSR1) or job.check_running(), 60, "the stop handlers")
    os.kill(pid, signal.SIGUSR1)  # while data is still being made: nothing to save
    assert job.wait() == [EXIT_PREEMPTED], job.output()[-3000:]
    assert "stopped by signal 10 during start-up, before the first step: nothing to save" in job.output()
    assert "Traceback" not in job.output() and not checkpoint_steps(run_dir)
    rerun = run_train(args, tmp_path)
    assert "reached train.max_steps=20 at step 20" in rerun.stdout and "done:" in rerun.stdout
    report("SIGUSR1 during start-up", "SIGUSR1 to `python -m ae_dist.train` while it makes its data, before step 1",
           "`stopped by signal 10 during start-up, before the first step: nothing to save; ...`, exit 75 (requeue); the "
           "rerun trained to the end", "none", "none")


def test_sigusr1_after_the_last_epoch_finishes_the_wrap_up_and_exits_0(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = Job.start([*TINY, f"run.dir={run_dir}", "train.epochs=1"], tmp_path)
    wait_for(lambda: "epoch 1/1," in job.output() or job.check_running(), 240, "the last epoch line")
    job.signal(signal.SIGUSR1)
    assert job.wait() == [0], job.output()[-3000:]
    assert {"model.pt", "recon.png", "latent.png", "loss.png"} <= {p.name for p in run_dir.iterdir()}
    report("SIGUSR1 after the last epoch", "SIGUSR1 right after the line of the last epoch (the wrap-up: model.pt, "
           "pictures, W&B)", "the wrap-up finished, exit 0", "none", "none")


@pytest.mark.slurm
def test_sbatch_stop_during_start_up_requeues_and_completes(slurm_cluster, tmp_path: Path) -> None:
    started = tmp_path / "started"
    env = hook_env(tmp_path, "announce_start", SLURM_CONF=str(slurm_cluster.slurm_conf), AE_DIST_PYTHON=PYTHON,
                   STARTED_DIR=str(started))
    run_dir = tmp_path / "run"
    job_id = sbatch(tmp_path, env, *TINY, *SLOW_START, "train.max_steps=20", f"run.dir={run_dir}")
    log = tmp_path / f"slurm-{job_id}.out"
    try:  # each task has its handlers once it has announced itself (SLURM signals a task that has not yet, too)
        wait_for(lambda: started.is_dir() and len(list(started.iterdir())) == 2, 180, "both tasks to start")
        slurm_cluster.run(["scancel", "--signal=USR1", job_id])
        rows = wait_ended(slurm_cluster, job_id)
    finally:
        slurm_cluster.run(["scancel", job_id], check=False)
    text = log.read_text()
    assert rows[0] == "REQUEUED" and rows[-1] == "COMPLETED", (rows, text[-3000:])
    assert "during start-up, before the first step: nothing to save" in text and "done:" in text, text[-3000:]
    assert states(slurm_cluster, job_id)[-1] == "COMPLETED"


# A batch larger than the data --------------------------------------------------------------------

def test_a_batch_larger_than_the_training_split_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_train([*TINY, f"run.dir={run_dir}", "train.batch_size=2000"], tmp_path, check=False)
    assert result.returncode == EXIT_USAGE
    line = one_clear_line(result.stderr)
    assert "train.batch_size" in line and "1500 images" in line, line
    assert not run_dir.exists()


# Ranks that do not see the same run folder --------------------------------------------------------

def srun_like(args: list[str], cwds: list[Path], tmp: Path) -> list[subprocess.CompletedProcess]:
    """One process per rank with the variables srun's tasks get translated to, each in its own folder."""
    port, procs = str(free_port()), []
    for rank, cwd in enumerate(cwds):
        env = clean_env(tmp, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(len(cwds)),
                        LOCAL_WORLD_SIZE=str(len(cwds)), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                        PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen(train_cmd(args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_ranks_that_see_different_run_folders_stop_with_one_line(reference_runs, tmp_path: Path) -> None:
    holding, empty = tmp_path / "node0", tmp_path / "node1"
    shutil.copytree(reference_runs((), 1) / "checkpoints", holding / "run" / "checkpoints")
    for path in (holding / "run" / "checkpoints").iterdir():
        if path.name != "step_00000020.pt":
            path.unlink()
    empty.mkdir()
    args = [*TINY, "run.dir=run"]  # relative: each rank resolves it in its own working folder
    results = srun_like(args, [holding, empty], tmp_path)
    assert [r.returncode for r in results] == [EXIT_USAGE, EXIT_USAGE], [r.stderr[-2000:] for r in results]
    text = "".join(r.stderr for r in results)
    assert "terminate called" not in text and "Traceback" not in text, text[-3000:]
    line = one_clear_line(text)
    assert line.startswith("error: run.dir is not shared between nodes: rank 1 on ") and "(run.dir)" in line, line
    report("ranks that see different run folders", "2 ranks started as srun starts them, run.dir relative, each in "
           "its own working folder (one holding a checkpoint)", "`error: run.dir is not shared between nodes: rank 1 "
           "on HOST does not see the lease that rank 0 holds in ... (run.dir): ...`, both exit 2, no abort",
           "none", "none")


def test_ranks_sharing_the_folder_resume_from_rank_0s_checkpoint(reference_runs, tmp_path: Path) -> None:
    reference = reference_runs((), 2)
    shutil.copytree(reference / "checkpoints", tmp_path / "run" / "checkpoints")
    newest = max((tmp_path / "run" / "checkpoints").iterdir())
    newest.unlink()  # so that there is something left to train
    results = srun_like([*TINY, "run.dir=run"], [tmp_path, tmp_path], tmp_path)
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    assert "resumed from" in results[0].stdout
    same_weights(tmp_path / "run", reference)


@pytest.mark.slurm
def test_node_local_run_folders_on_two_nodes_stop_with_one_line(slurm_cluster, tmp_path: Path) -> None:
    env = clean_env(tmp_path, SLURM_CONF=str(slurm_cluster.slurm_conf), AE_DIST_PYTHON=PYTHON, PYTHONPATH=str(REPO))
    script = tmp_path / "node_local.sh"
    script.write_text('#!/bin/sh\nexec "$AE_DIST_PYTHON" -m ae_dist.train "$@" run.dir="$NODE_LOCAL/$SLURMD_NODENAME/run"\n')
    script.chmod(0o755)
    env["NODE_LOCAL"] = str(tmp_path / "node-local")
    result = subprocess.run(["srun", "-N2", "-n2", "--ntasks-per-node=1", "--time=5", "--kill-on-bad-exit=0",
                             "--chdir", str(REPO), str(script), *TINY, "train.epochs=1"], timeout=300, env=env,
                            capture_output=True, text=True)
    text = result.stdout + result.stderr
    assert "terminate called" not in text and "Traceback" not in text, text[-3000:]
    assert one_clear_line(text).startswith("error: run.dir is not shared between nodes: rank 1 on aenode2 "), text
    assert result.returncode == EXIT_USAGE, text[-3000:]


# Checkpoints that do not fit -------------------------------------------------------------------

def test_damaged_checkpoint_contents_are_one_line_or_skipped(reference_runs, tmp_path: Path) -> None:
    reference = reference_runs((), 1)
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    steps = sorted(run_dir.glob("checkpoints/step_*.pt"))
    payload = torch.load(steps[-1], weights_only=True)
    no_rng = tmp_path / "no_rng.pt"
    torch.save({k: v for k, v in payload.items() if k != "rng"}, no_rng)
    wrong = dict(payload, model={**payload["model"], "encoder.0.weight": torch.zeros(3, 3)})
    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save(wrong, wrong_shape)
    for path in (no_rng, wrong_shape):
        result = run_train([*TINY, f"run.dir={tmp_path / 'other'}", f"train.resume={path}"], tmp_path, check=False)
        assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
        assert one_clear_line(result.stderr).startswith("error: checkpoint cannot be loaded ("), result.stderr
    torch.save(wrong, steps[-1])  # the newest checkpoint of the run, with a tensor of the wrong shape
    (run_dir / "checkpoints" / "step_00000001.pt").mkdir()  # a folder where a checkpoint would be
    result = run_train([*TINY, f"run.dir={run_dir}"], tmp_path)
    assert f"warning: skipping damaged checkpoint {steps[-1]}" in result.stderr, result.stderr[-2000:]
    assert f"resumed from {steps[-2]}" in result.stdout
    same_weights(run_dir, reference)
