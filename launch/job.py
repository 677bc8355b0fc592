"""What each task of a submitit job runs: the torchrun variables from the job, then the trainer.

submitit starts one task per GPU (or per CPU process) on every node and calls `TrainJob`
in each. The job's own description (`submitit.JobEnvironment`: ranks, node list, job id)
becomes RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT, which
is all `ae_dist` reads. On the scheduler's pre-timeout or preemption signal the trainer
writes a checkpoint at the next step boundary on every rank and returns; rank 0 then hands
the signal to submitit, which requeues the same `TrainJob` (`Checkpointable`), and the
requeued job resumes from that checkpoint in the same run folder and W&B run.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import submitit

import ae_dist
from ae_dist import trainer
from ae_dist.config import Config
from ae_dist.dist.job import master_port
from ae_dist.dist.preemption import StopSignals, exit_status
from ae_dist.errors import AeDistError, as_error, say

SINGLE_HOST_EXECUTORS = ("local", "debug")


def torchrun_env(job: submitit.JobEnvironment) -> dict[str, str]:
    """The torchrun variables for this task of the job."""
    master = "127.0.0.1" if job.cluster in SINGLE_HOST_EXECUTORS else job.hostnames[0]
    return {
        "RANK": str(job.global_rank),
        "LOCAL_RANK": str(job.local_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "LOCAL_WORLD_SIZE": str(max(1, job.num_tasks // max(1, job.num_nodes))),
        "MASTER_ADDR": master,
        "MASTER_PORT": str(master_port(job.raw_job_id)),
    }


def preempt_signal() -> signal.Signals:
    """The signal submitit treats as "checkpoint and requeue" (SIGUSR2 unless overridden)."""
    return signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"]


class TrainJob(submitit.helpers.Checkpointable):
    """One training run; all its state lives in ``config.run.dir``, so a requeue resubmits it as is."""

    def __init__(self, config: Config):
        self.config = config

    def __call__(self) -> dict[str, object]:
        job = submitit.JobEnvironment()
        os.environ.update(torchrun_env(job))
        print(f"ae-dist task {job.global_rank}/{job.num_tasks} on {socket.gethostname()} (job {job.job_id}, "
              f"{job.cluster}); code from {Path(ae_dist.__file__).resolve().parent.parent}", flush=True)
        stop = StopSignals.install()
        try:
            result = trainer.run(self.config, stop)
        except (AeDistError, OSError) as err:  # said as `python -m ae_dist.train` says it
            known = as_error(err, self.config.run.dir)
            if known is None:
                raise
            raise SystemExit(say(known)) from None
        finally:
            stop.restore()  # submitit's own handlers are back for the requeue below
        if result.status == "preempted":
            self.hand_over(job, result.signal)
        return {"status": result.status, "run_dir": str(result.run_dir), "step": result.step}

    def hand_over(self, job: submitit.JobEnvironment, received: int) -> None:
        """After the checkpoint: submitit's signal requeues (rank 0 asks); anything else just stops."""
        sig = preempt_signal()
        if received == sig and job.global_rank == 0 and job.cluster != "debug":
            print(f"requeueing job {job.job_id}: resumes from the checkpoint just written", flush=True)
            signal.raise_signal(sig)  # submitit's handler: self.checkpoint() -> requeue -> exit
        raise SystemExit(exit_status(received))


class PrepareJob:
    """One data preparation (`ae_dist.prepare`): every task decodes its share into the same prepared files."""

    def __init__(self, config: Config):
        self.config = config

    def __call__(self) -> dict[str, object]:
        from ae_dist import prepare

        job = submitit.JobEnvironment()
        os.environ.update(torchrun_env(job))
        print(f"ae-dist prepare task {job.global_rank}/{job.num_tasks} on {socket.gethostname()} (job {job.job_id})",
              flush=True)
        try:
            prepare.run(self.config)
        except (AeDistError, OSError) as err:
            known = as_error(err, "data.cache_dir")
            if known is None:
                raise
            raise SystemExit(say(known)) from None
        return {"status": "prepared", "run_dir": self.config.run.dir, "step": 0}


class InferJob:
    """``python -m ae_dist.encode`` or ``ae_dist.score`` as one task of a job: the same arguments, every rank.

    Its state is its output folder (finished chunks, `ae_dist.infer.chunks`): a requeued or resubmitted job
    continues where the last one stopped."""

    def __init__(self, command: str, argv: list[str]):
        self.command, self.argv = command, list(argv)

    def __call__(self) -> int:
        import importlib

        job = submitit.JobEnvironment()
        os.environ.update(torchrun_env(job))
        print(f"ae-dist {self.command} task {job.global_rank}/{job.num_tasks} on {socket.gethostname()} "
              f"(job {job.job_id}, {job.cluster})", flush=True)
        code = importlib.import_module(f"ae_dist.{self.command}").main(self.argv)
        if code:
            raise SystemExit(code)
        return code
