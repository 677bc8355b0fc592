"""Whether a run is complete: one record in the run folder, and the one function that reads it.

``run.dir/complete.json`` holds the step and epoch at which the run completed (its last epoch,
or ``train.max_steps``, or an early stop) and the targets it had then. The trainer writes it when
the wrap-up has finished (model.pt, pictures, the model artifact) and removes it when a
continuation starts (a larger ``train.epochs`` or ``train.max_steps``), before the first step.
The trainer at start-up, the elastic `settle` (`launch.requeue`) and `launch status` all ask
`is_complete`; model.pt alone says nothing (a continued run keeps its older one until it ends).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from ae_dist.config import TrainConfig
from ae_dist.run.folder import RunDir


def reached(train: TrainConfig, epoch: int, step: int, stopped_early: bool = False) -> bool:
    """Whether training at (``epoch``, ``step``) has reached the config's target: every epoch, train.max_steps, or an
    early stop (train.early_stop_patience), which no larger target continues."""
    return stopped_early or epoch >= train.epochs or bool(train.max_steps and step >= train.max_steps)


def read(run_dir: RunDir) -> dict[str, Any] | None:
    """The completion record, or None (no record, or one that a kill left unreadable)."""
    try:
        record = json.loads(run_dir.complete.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and all(isinstance(record.get(key), int) for key in ("epoch", "step"))
    return record if ok else None


def is_complete(run_dir: RunDir, train: TrainConfig | None = None) -> bool:
    """The run's wrap-up has finished (its record is there) and, given this command's ``train`` section, the
    record reached its target too (a larger train.epochs or train.max_steps continues the run)."""
    record = read(run_dir)
    return record is not None and (train is None or reached(train, record["epoch"], record["step"],
                                                             bool(record.get("stopped_early"))))


def write(run_dir: RunDir, train: TrainConfig, epoch: int, step: int, stopped_early: bool = False) -> None:
    """Record that the run completed at (``epoch``, ``step``): after the wrap-up, atomically."""
    record = {"epoch": epoch, "step": step, "epochs": train.epochs, "max_steps": train.max_steps,
              "stopped_early": stopped_early,
              "at": datetime.datetime.now().isoformat(timespec="seconds")}
    tmp = run_dir.root / f".{run_dir.complete.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir.complete)


def clear(run_dir: RunDir) -> None:
    """A continuation starts: the run is no longer complete until its wrap-up records it again."""
    run_dir.complete.unlink(missing_ok=True)
