"""One error path whatever started the ranks (issue 9): under submitit's local executor and on the
local SLURM cluster, a NaN stop, a lost peer and a full disk end as under torchrun (tests/test_faults.py):
exactly one `error:` line per failing rank, exit status 1, no traceback. And one rendezvous port for
a job id with a non-numeric part, whether the sbatch path (`ae_dist.dist.group.read_env` in an srun task)
or the submitit path (`launch.job.torchrun_env`) derives it.

    /work/main/.venv/bin/python -m pytest tests/test_error_paths.py -q    # as root (tmpfs, SLURM)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import submitit

from ae_dist.dist.group import read_env
from ae_dist.dist.job import master_port
from ae_dist.errors import EXIT_FAILED
from launch.job import torchrun_env
from launch.jobs import Record
from tests.helpers.commands import PYTHON, TINY, clean_env, hook_env, wait_for
from tests.helpers.faults import error_lines, fill_disk, one_clear_line, tmpfs
from tests.helpers.launcher import exit_status, held, last_record, local_tasks, run_launch, start_launch, wait_for_record
from tests.helpers.processes import stop_process
from tests.helpers.run_files import checkpoint_steps, logged_steps
from tests.helpers.slurm import SlurmCluster

# Two ranks, a train record every step, no W&B, one intra-op thread each (2 cores, 2 ranks).
FAST = [*TINY, "train.epochs=2", "train.log_every=1", "wandb.mode=disabled", "train.threads=1"]
POISON_STEP = 5
TIMEOUT_S = 15  # dist.timeout_s for the lost peer: a busy 2-core machine stalls a rank for seconds
TASK_TIMEOUT = 240
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


class LocalRun:
    """Two tasks under `python -m launch --executor local --wait`; its controller held (`held`) so that
    each task's own exit status can be read."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str]):
        self.launcher = start_launch(["--executor", "local", "--tasks-per-node", "2", "--wait", *args], tmp, env)
        self.record = wait_for_record(tmp, self.launcher)
        self.tasks = local_tasks(self.record, 2)
        held(psutil.Process(int(self.record.job_id)))

    def log(self, rank: int) -> str:
        return Path(self.record.runs[0].logs[rank]).read_text(errors="replace")

    def exit_statuses(self, ranks: list[int]) -> dict[int, int]:
        return {rank: exit_status(self.tasks[rank], TASK_TIMEOUT) for rank in ranks}

    def end(self) -> int:
        """Kill what is left of the tasks, let the controller go on; the exit status of the launcher
        (``--wait``: 1 for a job that ended without completing)."""
        for task in self.tasks.values():
            with contextlib.suppress(psutil.Error):
                if task.status() != psutil.STATUS_ZOMBIE:
                    task.kill()
        psutil.Process(int(self.record.job_id)).resume()
        (status,) = self.launcher.wait(TASK_TIMEOUT)
        return status


class SlurmRun:
    """One task on each of the cluster's two nodes, submitted with `python -m launch --nodes 2`; srun
    reports each task that exits non-zero (``srun: error: NODE: task R: Exited with exit code C``)."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str], cluster: SlurmCluster):
        self.cluster, self.looked_up = cluster, []
        submitted = run_launch(["--nodes", "2", "--cpus-per-task", "1", "--time", "10", *args], tmp, env)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        self.record: Record = last_record(tmp)
        self.job_id = self.record.job_id
        self.folder = Path(self.record.runs[0].logs[0]).parent

    def log(self, rank: int) -> str:
        return Path(self.record.runs[0].logs[rank]).read_text(errors="replace")

    def task(self, rank: int) -> psutil.Process:
        """The process of task ``rank`` (the nodes share this machine's process table)."""
        def found() -> psutil.Process | None:
            for proc in psutil.process_iter(["cmdline"]):
                if "submitit.core._submit" in " ".join(proc.info["cmdline"] or ()):
                    with contextlib.suppress(psutil.Error):
                        env = proc.environ()
                        if env.get("SLURM_JOB_ID") == self.job_id and env.get("SLURM_PROCID") == str(rank):
                            return proc
            return None

        self.looked_up.append(wait_for(found, TASK_TIMEOUT, f"task {rank} of job {self.job_id}"))
        return self.looked_up[-1]

    def exit_statuses(self, ranks: list[int]) -> dict[int, int]:
        def reported() -> dict[int, int] | None:
            text = "".join(p.read_text(errors="replace") for p in sorted(self.folder.glob(f"{self.job_id}_*")))
            found = {int(r): int(c) for r, c in re.findall(r"srun: error: \S+: tasks? (\d+): Exited with exit code (\d+)",
                                                           text)}
            return found if set(ranks) <= set(found) else None

        return wait_for(reported, TASK_TIMEOUT, f"srun's report of tasks {ranks} of job {self.job_id}")

    def end(self) -> int:
        """Kill what is left of the tasks looked up; the job's exit status as sacct reports it once it ended."""
        for task in self.looked_up:
            with contextlib.suppress(psutil.Error):
                task.kill()
        self.cluster.wait_state(self.job_id, ENDED, timeout=TASK_TIMEOUT)
        out = self.cluster.run(["sacct", "-j", self.job_id, "-X", "-n", "-P", "-o", "ExitCode"]).stdout
        return int(out.split()[-1].split(":")[0])  # "1:0": exit status 1, no signal


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def start(request, tmp_path: Path) -> Iterator:
    """Start 2 ranks of ``args`` under the executor of this test's parameter; the test's folder and environment."""
    started: list[LocalRun | SlurmRun] = []

    def run(args: list[str], env: dict[str, str]) -> LocalRun | SlurmRun:
        if request.param == "local":
            started.append(LocalRun(args, tmp_path, env))
        else:
            cluster = request.getfixturevalue("slurm_cluster")
            started.append(SlurmRun(args, tmp_path, {**env, "SLURM_CONF": str(cluster.slurm_conf),
                                                     "AE_DIST_PYTHON": PYTHON}, cluster))
        return started[-1]

    yield run
    for job in started:
        if isinstance(job, SlurmRun):
            job.cluster.run(["scancel", job.job_id], check=False)


def assert_clear_end(log: str) -> str:
    """A failing rank's log: one `error:` line, no traceback; the line without its ``rank N:`` prefix."""
    return re.sub(r"^rank \d+: ", "", one_clear_line(log))


def test_nan_stop_is_one_line_per_rank_and_exit_1(start, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = start([*FAST, f"run.dir={run_dir}"], hook_env(tmp_path, "poison_batch", POISON_STEP=str(POISON_STEP)))
    assert job.exit_statuses([0, 1]) == {0: EXIT_FAILED, 1: EXIT_FAILED}, job.log(0)[-3000:] + job.log(1)[-3000:]
    for rank in (0, 1):
        line = assert_clear_end(job.log(rank))
        assert line.startswith(f"error: loss is NaN or Inf at step {POISON_STEP} (train.nan_policy=stop)"), line
    assert one_clear_line(job.log(1)).startswith("rank 1: error: ")  # said once, as rank 1's own
    assert max(logged_steps(run_dir)) < POISON_STEP
    assert job.end() == EXIT_FAILED  # the launcher (--wait) or sacct: the job failed with exit status 1


def test_lost_peer_is_one_line_from_the_rank_that_waited_and_exit_1(start, tmp_path: Path) -> None:
    """SIGSTOP rank 1 (rank 0 hosts the store): rank 0 gives up after dist.timeout_s plus a heartbeat check."""
    run_dir = tmp_path / "run"
    job = start([*FAST, f"run.dir={run_dir}", "train.epochs=30", f"dist.timeout_s={TIMEOUT_S}"], clean_env(tmp_path))
    wait_for(lambda: max(logged_steps(run_dir), default=0) >= 3, TASK_TIMEOUT, "step 3 in metrics.jsonl")
    silent = job.tasks[1] if isinstance(job, LocalRun) else job.task(1)
    stop_process(silent.pid)
    assert job.exit_statuses([0]) == {0: EXIT_FAILED}, job.log(0)[-3000:]
    line = assert_clear_end(job.log(0))
    assert re.search(r"rank 1 on \S+ stopped answering", line) and f"(dist.timeout_s={TIMEOUT_S})" in line, line
    assert error_lines(job.log(1)) == [] and "Traceback" not in job.log(1)  # the stopped rank said nothing
    job.end()


@pytest.mark.parametrize("start", ["local"], indirect=True)
def test_full_disk_is_one_line_per_rank_and_exit_1(start, tmp_path: Path) -> None:
    """run.dir (and the task logs in it) on a 32 MiB tmpfs, filled to 1 MiB free after checkpoint 10:
    rank 0 cannot write the next checkpoint (2.6 MB); rank 1 then finds rank 0 gone."""
    with tmpfs(tmp_path / "disk", "32m") as disk:
        run_dir = disk / "run"
        job = start([*FAST, f"run.dir={run_dir}", "dist.timeout_s=30"], clean_env(tmp_path))
        wait_for(lambda: max(logged_steps(run_dir), default=0) >= 11, TASK_TIMEOUT, "step 11 in metrics.jsonl")
        for task in job.tasks.values():
            stop_process(task.pid)
        good = checkpoint_steps(run_dir)[-1]
        fill_disk(disk, leave_bytes=1 << 20)
        for task in job.tasks.values():
            task.send_signal(signal.SIGCONT)
        assert job.exit_statuses([0, 1]) == {0: EXIT_FAILED, 1: EXIT_FAILED}, job.log(0)[-3000:] + job.log(1)[-3000:]
        line = assert_clear_end(job.log(0))
        assert re.search(r"could not write checkpoint \S+step_\d+\.pt: No space left on device", line), line
        assert "rank 0" in assert_clear_end(job.log(1))  # rank 1 names the rank it lost
        assert checkpoint_steps(run_dir)[-1] == good
        job.end()


# A job id with a non-numeric part: one port, whichever launcher asks -------------------------------


ARRAY_TASK_ID = "123_4"


def test_array_task_job_id_gives_one_port_on_the_sbatch_and_submitit_paths(monkeypatch) -> None:
    # sbatch slurm/train.sbatch: srun starts `python -m ae_dist.train` per task; the trainer reads the srun variables.
    srun_task = {"SLURM_JOB_ID": ARRAY_TASK_ID, "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2",
                 "SLURM_NTASKS_PER_NODE": "1", "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "aenode[1-2]",
                 "MASTER_ADDR": "aenode1"}
    from_srun = read_env(srun_task)["MASTER_PORT"]
    # submitit: launch.job.TrainJob turns the task's JobEnvironment into the torchrun variables.
    for name in [n for n in list(os.environ) if n.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(name)
    for name, value in {**srun_task, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1"}.items():
        monkeypatch.setenv(name, value)
    job = submitit.JobEnvironment()
    assert job.cluster == "slurm" and job.raw_job_id == ARRAY_TASK_ID and job.global_rank == 1
    from_submitit = torchrun_env(job)["MASTER_PORT"]
    assert from_srun == from_submitit == str(master_port(ARRAY_TASK_ID))
    assert master_port(ARRAY_TASK_ID) != master_port("1234")  # not the number's digits alone
