"""The run folder: its file names and its provenance record (``run.json``).

Every module that reads or writes a run folder (the trainer, evaluate, the launcher) takes
the names from `RunDir`.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ae_dist.run.lease import check_held

RUN_INFO = "run.json"


@dataclass(frozen=True)
class RunDir:
    """The layout of one run folder (``run.dir``)."""

    root: Path  # as the config has it, ~ expanded already (`ae_dist.config.resolve_paths`)

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
    def model_best(self) -> Path:  # the weights that scored best on the validation split (train.eval_every_steps)
        return self.root / "model-best.pt"

    @property
    def model_ema(self) -> Path:  # the exponential moving average of the weights (train.ema_decay)
        return self.root / "model-ema.pt"

    @property
    def complete(self) -> Path:  # the completion record: step and epoch the wrap-up finished at (ae_dist.run.completion)
        return self.root / "complete.json"

    @property
    def baseline(self) -> Path:  # PCA at the run's latent size and its test loss (ae_dist.baseline), kept across resumes
        return self.root / "baseline.json"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def incidents(self) -> Path:  # stacks of every live rank when one went silent (ae_dist.dist.incidents)
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
    check_held(RUN_INFO)  # a holder taken over writes nothing more (ae_dist.run.lease)
    info = read_run_info(root) | values
    tmp = root / f".{RUN_INFO}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / RUN_INFO)


def launch_command() -> str:
    """The command as launched, shell-quoted: torchrun's own command line for its workers."""
    argv = list(sys.orig_argv)  # as typed: python -m ae_dist.train ...
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        try:
            raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
            argv = [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0") if part]
        except OSError:
            pass
    return shlex.join(argv)


def git_state(folder: Path = Path(__file__).resolve().parent) -> tuple[str, bool | None]:
    """(SHA of HEAD, whether tracked files differ from it) of the code that runs; ("", None) outside git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=folder)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return "", None
    return sha, bool(git("status", "--porcelain", "--untracked-files=no"))


def record_launch(run_dir: RunDir, hosts: list[str], job: str, keep: int = 100) -> None:
    """Append this start of the run to ``run.json``'s ``launches`` (the newest ``keep``): when, the command as
    launched, the host of each rank, the job, and the code (git SHA, dirty flag). The first start's command,
    SHA and dirty flag are also the top-level ``command``, ``git_sha``, ``git_dirty``."""
    sha, dirty = git_state()
    launch = {"at": datetime.datetime.now().isoformat(timespec="seconds"), "command": launch_command(),
              "hosts": hosts, "world_size": len(hosts), "job": job, "git_sha": sha, "git_dirty": dirty}
    info = run_dir.read_info()
    first = {} if "command" in info else {"command": launch["command"], "git_sha": sha, "git_dirty": dirty}
    run_dir.write_info(**first, launches=[*info.get("launches", []), launch][-keep:])
