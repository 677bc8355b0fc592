"""The run's W&B identity: its run id (kept in the run folder), group and display name.

The launcher prints the id and group that the trainer will use because both ask this code.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from ae_dist.dist.job import Job
from ae_dist.run.folder import read_run_info, write_run_info


def wandb_run_id(root: Path, create: bool = True) -> str:
    """The run folder's W&B run id: the one ``run.json`` holds, else (``create``) a new one, stored there."""
    known = read_run_info(root).get("wandb_run_id", "")
    if known or not create:
        return known
    Path(root).mkdir(parents=True, exist_ok=True)
    run_id = new_wandb_run_id()
    write_run_info(root, wandb_run_id=run_id)
    return run_id


def new_wandb_run_id(env: dict[str, str] | None = None) -> str:
    """A fresh W&B run id; under `wandb agent` (a sweep), the id the agent gave this run."""
    return Job.from_env(env).sweep_run_id or secrets.token_hex(4)


def wandb_group(configured: str, env: dict[str, str] | None = None) -> str:
    """wandb.group if set, else the SLURM job (array) id, else torchrun's run id, else none."""
    return configured or Job.from_env(env).group


def wandb_name(configured: str, root: Path, env: dict[str, str] | None = None) -> str:
    """wandb.name if set, else the run folder's name, with the SLURM job id and array task."""
    return configured or Path(root).resolve().name + Job.from_env(env).name_suffix
