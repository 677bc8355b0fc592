"""The run folder: its file names, its provenance record, and the run's W&B identity.

Every module that reads or writes a run folder (the trainer, evaluate, the launcher) takes
the names from `RunDir`, and the W&B run id, group and name from the functions here: the
launcher prints the id and group that the trainer will use because both ask the same code.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_INFO = "run.json"


@dataclass(frozen=True)
class RunDir:
    """The layout of one run folder (``run.dir``)."""

    root: Path

    @property
    def config(self) -> Path:  # the resolved config in effect
        return self.root / "config.yaml"

    @property
    def info(self) -> Path:  # provenance: git SHA, versions, command, W&B run id
        return self.root / RUN_INFO

    @property
    def metrics(self) -> Path:  # one JSON object per line, rank 0
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:  # final weights, a plain state_dict
        return self.root / "model.pt"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def incidents(self) -> Path:  # stacks of every live rank when one went silent (ae_dist.incidents)
        return self.root / "incidents"

    def picture(self, name: str) -> Path:  # recon, latent, loss
        return self.root / f"{name}.png"

    def read_info(self) -> dict[str, Any]:
        return read_run_info(self.root)

    def write_info(self, **values: Any) -> None:
        write_run_info(self.root, **values)


def read_run_info(root: Path) -> dict[str, Any]:
    """``run.json`` as a dict; {} when it is missing or unreadable."""
    try:
        info = json.loads((Path(root) / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def write_run_info(root: Path, **values: Any) -> None:
    """Merge ``values`` into ``run.json``, atomically."""
    root = Path(root)
    info = read_run_info(root) | values
    tmp = root / f".{RUN_INFO}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / RUN_INFO)


def wandb_run_id(root: Path, create: bool = True) -> str:
    """The run folder's W&B run id: the one ``run.json`` holds, else (``create``) a new one, stored there."""
    known = read_run_info(root).get("wandb_run_id", "")
    if known or not create:
        return known
    Path(root).mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)
    write_run_info(root, wandb_run_id=run_id)
    return run_id


def wandb_group(configured: str, env: dict[str, str] | None = None) -> str:
    """wandb.group if set, else the SLURM job (array) id, else torchrun's run id, else none."""
    env = os.environ if env is None else env
    if configured:
        return configured
    job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    if job:
        return f"slurm-{job}"
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return ""


def wandb_name(configured: str, root: Path, env: dict[str, str] | None = None) -> str:
    """wandb.name if set, else the run folder's name, with the SLURM job id and array task."""
    env = os.environ if env is None else env
    if configured:
        return configured
    job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    task = env.get("SLURM_ARRAY_TASK_ID")
    return Path(root).resolve().name + (f"-{job}" if job else "") + (f"-{task}" if task else "")


def launch_command() -> str:
    """The command as launched, shell-quoted: torchrun's own command line for its workers."""
    argv = [sys.executable, *sys.argv]
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        try:
            raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
            argv = [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0") if part]
        except OSError:
            pass
    return shlex.join(argv)
