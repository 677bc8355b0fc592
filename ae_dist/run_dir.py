"""The run folder: its file names, its provenance record, and the run's W&B identity.

Every module that reads or writes a run folder (the trainer, evaluate, the launcher) takes
the names from `RunDir`, and the W&B run id, group and name from the functions here: the
launcher prints the id and group that the trainer will use because both ask the same code.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
import secrets
import shlex
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ae_dist.config import Config
    from ae_dist.dist import DistInfo

RUN_INFO = "run.json"


@dataclass(frozen=True)
class RunDir:
    """The layout of one run folder (``run.dir``)."""

    root: Path

    def __post_init__(self) -> None:  # run.dir=~/x means the home folder's x, as data.root does
        object.__setattr__(self, "root", Path(self.root).expanduser())

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
    run_id = new_wandb_run_id()
    write_run_info(root, wandb_run_id=run_id)
    return run_id


def new_wandb_run_id(env: dict[str, str] | None = None) -> str:
    """A fresh W&B run id; under `wandb agent` (a sweep), the id the agent gave this run."""
    env = os.environ if env is None else env
    if env.get("WANDB_SWEEP_ID") and env.get("WANDB_RUN_ID"):
        return env["WANDB_RUN_ID"]
    return secrets.token_hex(4)


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


# ------------------------------------------------------------------------------------------- run.dir templates

TEMPLATE_FIELDS = ("wandb_run_id", "date", "time")
RESOLVED = ".run-dirs.jsonl"  # beside the folders a template makes: one line per (template, launch) resolved


def template_fields(template: str) -> list[str]:
    """The fields a run.dir names (none: not a template); ValueError for a field that is not one of TEMPLATE_FIELDS."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"a stray brace ({err})") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(f"unknown field {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}")
        names.append(name)
    return names


def template_problems(template: str) -> list[tuple[str, str, str]]:
    """Config validation of run.dir: its template fields, as (what, where, fix) problems."""
    try:
        template_fields(template)
    except ValueError as err:
        return [(f"run.dir template has {err}", "run.dir",
                 "use {wandb_run_id}, {date} or {time}")]
    return []


def launch_key(env: dict[str, str] | None = None) -> str:
    """What stays the same when the same launch runs again: a W&B sweep run, a SLURM job (requeued), a torchrun run."""
    env = os.environ if env is None else env
    if env.get("WANDB_SWEEP_ID") and env.get("WANDB_RUN_ID"):
        return f"wandb-{env['WANDB_RUN_ID']}"
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return ""


def resolve_template(template: str, key: str = "", now: datetime.datetime | None = None) -> str:
    """The folder a run.dir template names, made once; the same ``key`` (`launch_key`) finds it again.

        resolve_template("runs/sweep/{wandb_run_id}")            # runs/sweep/3f9a0c1e, a new folder each call
        resolve_template("runs/{date}/{time}", "slurm-4242")     # the same folder for every run of job 4242

    Fields: ``{wandb_run_id}`` (a new W&B run id, stored in the folder's run.json so that W&B and
    the folder agree), ``{date}`` (2026-11-29) and ``{time}`` (153012), local time. The folder is
    created here; a name that exists already gets ``-2``, ``-3``, ... With a key, the pair is
    recorded in ``.run-dirs.jsonl`` in the template's fixed parent folder, under an exclusive
    lock, so a requeued sbatch job (same SLURM job id), a restarted torchrun (same run id) or a
    sweep run W&B starts again lands in the same folder. A plain path is returned as it is.
    """
    if not template_fields(template):
        return template
    if not key:
        return _make(template, now)
    fixed = template[:template.index("{")]
    parent = Path(fixed.rsplit("/", 1)[0] if "/" in fixed else ".")
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / RESOLVED, "a+", encoding="utf-8") as record:
        fcntl.flock(record, fcntl.LOCK_EX)  # released when the file closes
        record.seek(0)
        for line in record.read().splitlines():
            try:
                known = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if known.get("key") == key and known.get("template") == template:
                return known["dir"]
        folder = _make(template, now)
        record.write(json.dumps({"key": key, "template": template, "dir": folder}) + "\n")
        record.flush()
    return folder


def preview_template(template: str, now: datetime.datetime | None = None) -> str:
    """The folder a run.dir template would name now, with nothing created (``{wandb_run_id}`` shown as
    ``<new-run-id>``: the id is drawn when the folder is made)."""
    if not template_fields(template):
        return template
    now = now or datetime.datetime.now()
    return template.format(wandb_run_id="<new-run-id>", date=now.strftime("%Y-%m-%d"), time=now.strftime("%H%M%S"))


def _make(template: str, now: datetime.datetime | None) -> str:
    """The template filled with a new W&B run id and ``now``; the folder created, its run.json written."""
    now = now or datetime.datetime.now()
    run_id = new_wandb_run_id()
    folder = _new_folder(template.format(wandb_run_id=run_id, date=now.strftime("%Y-%m-%d"), time=now.strftime("%H%M%S")))
    write_run_info(Path(folder), wandb_run_id=run_id, run_dir_template=template)
    return folder


def _new_folder(name: str) -> str:
    for attempt in range(1, 1000):
        folder = name if attempt == 1 else f"{name}-{attempt}"
        try:
            Path(folder).mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(name)


def agree_run_dir(config: Config, info: DistInfo) -> Config:
    """``config`` with its run.dir template resolved by rank 0 (`resolve_template`) and sent to every rank."""
    if not template_fields(config.run.dir):
        return config
    import torch.distributed as dist

    from ae_dist.errors import UsageError

    resolved = [""]
    if info.is_main:
        try:
            resolved[0] = resolve_template(config.run.dir, launch_key())
        except OSError as err:
            resolved[0] = f"\0{err.strerror or err}"
    if info.distributed:
        dist.broadcast_object_list(resolved, src=0)
    if resolved[0].startswith("\0"):
        raise UsageError(f"cannot create the run folder ({resolved[0][1:]})", "run.dir", "choose a writable folder")
    if info.is_main:
        print(f"run folder: {resolved[0]} (run.dir template {config.run.dir}; rerun with run.dir={resolved[0]} "
              "to resume it)", flush=True)
    return dataclasses.replace(config, run=dataclasses.replace(config.run, dir=resolved[0]))
