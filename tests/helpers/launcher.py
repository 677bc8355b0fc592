"""The launcher as the tests run it: `python -m launch` from a work folder, and what it submitted.

    job = start_launch(["--executor", "local", "--tasks-per-node", "2", "--wait", *TINY, "run.dir=run"], tmp)
    record = wait_for_record(tmp, job)     # the registry's newest line: job id, run folders, task logs
    tasks = local_tasks(record)            # rank -> pid of each task under submitit's local executor
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import psutil

from launch.jobs import REGISTRY, Record
from tests.helpers.commands import PYTHON, clean_env, wait_for
from tests.helpers.processes import Job


def start_launch(args: list[str], tmp: Path, env: dict[str, str] | None = None) -> Job:
    """``python -m launch ARGS`` in the work folder ``tmp``, as a `Job` (killed with its controller and tasks)."""
    return Job.command([[PYTHON, "-m", "launch", *args]], tmp, [env or clean_env(tmp)], name="launch", cwd=tmp)


def run_launch(args: list[str], tmp: Path, env: dict[str, str] | None = None, timeout: float = 300) \
        -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "launch", *args], cwd=tmp, env=env or clean_env(tmp), capture_output=True,
                          text=True, timeout=timeout)


def last_record(tmp: Path) -> Record:
    """The newest submission the work folder ``tmp`` remembers."""
    return Record.from_json((tmp / REGISTRY).read_text().splitlines()[-1])


def wait_for_record(tmp: Path, launcher: Job, timeout: float = 120) -> Record:
    def submitted() -> bool:
        launcher.check_running()
        return (tmp / REGISTRY).exists()

    wait_for(submitted, timeout, "the job to be submitted")
    return last_record(tmp)


def local_tasks(record: Record, count: int, timeout: float = 120) -> dict[int, psutil.Process]:
    """rank -> task process of a job under submitit's local executor (the controller's children)."""
    controller = psutil.Process(int(record.job_id))

    def started() -> dict[int, psutil.Process] | None:
        tasks = {}
        for task in controller.children():
            with contextlib.suppress(psutil.Error):
                rank = task.environ().get("SUBMITIT_LOCAL_GLOBALID")  # unset until the forked child has exec'd
                if rank is not None:
                    tasks[int(rank)] = task
        return tasks if len(tasks) == count else None

    return wait_for(started, timeout, f"{count} tasks of local job {record.job_id}")


def exit_status(task: psutil.Process, timeout: float = 240) -> int:
    """The exit status of a task someone else reaps, read while it is a zombie (as Popen.returncode:
    negative for a signal). Its parent must not reap it meanwhile: see `held`."""
    wait_for(lambda: task.status() == psutil.STATUS_ZOMBIE, timeout, f"task {task.pid} to end")
    fields = Path(f"/proc/{task.pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = int(fields[49])  # field 52 of proc_pid_stat(5), the wait status; fields here start at field 3
    return -(status & 0x7F) if status & 0x7F else status >> 8


def held(controller: psutil.Process) -> None:
    """Stop submitit's local controller (SIGSTOP): the tasks it would reap stay zombies, so `exit_status`
    can read how each of them ended; SIGCONT lets it go on (reap, then end the job)."""
    controller.suspend()
    wait_for(lambda: controller.status() == psutil.STATUS_STOPPED, 30, f"controller {controller.pid} to stop")
