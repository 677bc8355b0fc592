"""The job this process belongs to, as the launcher's environment describes it: read once, frozen.

Every decision that depends on the job takes a `Job` (or calls the one function here that
derives it): the run's job id in the lease and the incidents, the key that finds a resolved
run.dir template again, the W&B group and name, the rendezvous port, the job's hosts. Two
modules that each read ``SLURM_*`` themselves drift apart; this one has no torch import, so
the launcher uses it too.
"""

from __future__ import annotations

import os
import re
import subprocess
import zlib
from dataclasses import dataclass

# Rendezvous ports 15000-31999: below Linux's ephemeral range (32768-60999, net.ipv4.ip_local_port_range), where
# the kernel picks the local ports of outgoing connections, so a busy node never holds ours by chance.
PORT_BASE, PORT_SPAN = 15000, 17000


@dataclass(frozen=True)
class Job:
    slurm_job_id: str = ""  # SLURM_JOB_ID: this job (an array task has its own)
    slurm_array_job_id: str = ""  # SLURM_ARRAY_JOB_ID: the array's id, shared by its tasks
    slurm_array_task_id: str = ""  # SLURM_ARRAY_TASK_ID
    slurm_restart_count: int = 0  # SLURM_RESTART_COUNT: requeues so far
    slurm_nodelist: str = ""  # SLURM_JOB_NODELIST, compressed ("node[1-3]")
    torchrun_run_id: str = ""  # TORCHELASTIC_RUN_ID ("" when torchrun's is "none" or absent)
    sweep_run_id: str = ""  # WANDB_RUN_ID under `wandb agent` (WANDB_SWEEP_ID set)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Job:
        env = os.environ if env is None else env
        torchrun = env.get("TORCHELASTIC_RUN_ID", "")
        return cls(
            slurm_job_id=env.get("SLURM_JOB_ID", ""),
            slurm_array_job_id=env.get("SLURM_ARRAY_JOB_ID", ""),
            slurm_array_task_id=env.get("SLURM_ARRAY_TASK_ID", ""),
            slurm_restart_count=int(env.get("SLURM_RESTART_COUNT", "0") or 0),
            slurm_nodelist=env.get("SLURM_JOB_NODELIST", ""),
            torchrun_run_id="" if torchrun == "none" else torchrun,
            sweep_run_id=env.get("WANDB_RUN_ID", "") if env.get("WANDB_SWEEP_ID") else "",
        )

    @property
    def slurm_job(self) -> str:
        """The SLURM job as users name it: the array's id for an array task, else the job id; "" outside SLURM."""
        return (self.slurm_array_job_id or self.slurm_job_id) if self.slurm_job_id else ""

    @property
    def id(self) -> str:
        """What a requeue or restart of this run shares: ``slurm-123``, ``slurm-123_4`` (array task), ``torchrun-ID``, or ""."""
        if self.slurm_job_id:
            task = f"_{self.slurm_array_task_id}" if self.slurm_array_task_id else ""
            return f"slurm-{self.slurm_job}{task}"
        return f"torchrun-{self.torchrun_run_id}" if self.torchrun_run_id else ""

    @property
    def launch_key(self) -> str:
        """What stays the same when the same launch runs again: a W&B sweep run, a SLURM job (requeued), a torchrun run."""
        return f"wandb-{self.sweep_run_id}" if self.sweep_run_id else self.id

    @property
    def group(self) -> str:
        """The W&B group a run of this job joins unless wandb.group says otherwise."""
        if self.slurm_job:
            return f"slurm-{self.slurm_job}"
        return f"torchrun-{self.torchrun_run_id}" if self.torchrun_run_id else ""

    @property
    def name_suffix(self) -> str:
        """What a W&B run name adds to the run folder's name: ``-JOB`` and ``-TASK`` of an array task."""
        return (f"-{self.slurm_job}" if self.slurm_job else "") + (
            f"-{self.slurm_array_task_id}" if self.slurm_array_task_id else "")

    @property
    def hosts(self) -> list[str]:
        return expand_hosts(self.slurm_nodelist)


def master_port(job_id: str) -> int:
    """The rendezvous port of a job, derived alike by every task of it, whichever launcher started it.

    From the numeric job id, or a CRC-32 of any other id (an array task ``123_4``, a local pid): 15000 + that
    number modulo 17000, so 15000-31999, below the ephemeral range (32768-60999) that outgoing connections
    take their local ports from (as Lightning's 15000 + job id). A port still held by another program on
    the first node is one line at start (`ae_dist.dist.group`: ``MASTER_PORT N is already in use``).
    """
    number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return PORT_BASE + number % PORT_SPAN


def expand_hosts(hostlist: str) -> list[str]:
    """SLURM's compressed host list (``node[1-3,07],gpu7``) as host names, in SLURM's order.

    ``scontrol show hostnames`` where SLURM is installed; else the same syntax parsed here
    (zero-padded ranges kept padded), so a node without scontrol on its PATH sees the same hosts.
    """
    if not hostlist or hostlist == "(null)":
        return []
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True, timeout=30,
                             check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return out or parse_hostlist(hostlist)


def parse_hostlist(hostlist: str) -> list[str]:
    """``a[1-3,7]b,c`` -> a1b a2b a3b a7b c: SLURM's host list syntax, without asking SLURM."""
    hosts: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", hostlist):
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            parts = [literal] if not ranges else [literal + n for n in _expand_ranges(ranges)]
            names = [name + part for name in names for part in parts]
        hosts.extend(names)
    return hosts


def _expand_ranges(ranges: str) -> list[str]:
    numbers = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not high:
            numbers.append(low)
            continue
        width = len(low) if low.startswith("0") else 0
        numbers.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return numbers
