"""run.dir templates made concrete: one folder per launch, found again by the same launch.

A template (``runs/{date}/{wandb_run_id}``) is resolved once, at the first launch; a requeued
SLURM job, a restarted torchrun or a sweep run that W&B starts again finds the same folder
through its launch key (`ae_dist.dist.job.Job.launch_key`).
"""

from __future__ import annotations

import datetime
import fcntl
import json
from pathlib import Path

from ae_dist.config.templates import template_fields
from ae_dist.run.folder import write_run_info
from ae_dist.run.identity import new_wandb_run_id

RESOLVED = ".run-dirs.jsonl"  # beside the folders a template makes: one line per (template, launch) resolved


def resolve_template(template: str, key: str = "", now: datetime.datetime | None = None) -> str:
    """The folder a run.dir template names, made once; the same ``key`` (`Job.launch_key`) finds it again.

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
