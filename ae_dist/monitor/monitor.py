"""Rank 0's output in one object: each new record to metrics.jsonl first, then W&B, and the console.

Other ranks get `NullMonitor`, whose methods do nothing, so the loop never asks who it is.
Besides the records, W&B gets the per-rank step times (`ae_dist.monitor.ranks`, in the same history
row as the train record), an alert per straggler, the best and final test loss in the
summary (with the baseline's test loss and the final one as a multiple of it), the newest
checkpoint when the run stops (``wandb.log_checkpoints``; an artifact costs W&B a few hundred
ms, too much for the loop) and the final model.pt as a ``model`` artifact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ae_dist.config import WandbConfig
from ae_dist.monitor import console
from ae_dist.monitor.ranks import RankTimes, Stragglers
from ae_dist.monitor.wandb_run import WandbRun, file_digest, job_facts, wandb_mode
from ae_dist.run.checkpoint import NAME as CHECKPOINT_NAME
from ae_dist.run.checkpoint import list_checkpoints
from ae_dist.run.folder import RunDir
from ae_dist.run.metrics import MetricsFile, read_metrics


class Monitor:
    """Rank 0: writes each new record to metrics.jsonl, W&B and the console."""

    def __init__(self, run_dir: RunDir, wandb_cfg: WandbConfig, run_id: str, config: dict[str, Any], epochs: int,
                 hosts: list[str], baseline: str = ""):
        self.run_dir, self.cfg = run_dir, wandb_cfg
        self.baseline = baseline  # its name in the epoch lines ("PCA-3"); "" when the run has none
        self.metrics = MetricsFile(run_dir.metrics)
        self.epochs = epochs
        self.stragglers = Stragglers()
        self.rank_times: dict[str, Any] = {}  # the newest window's ranks/* keys, logged with the next train record
        earlier = read_metrics(self.metrics.path)
        test_losses = [r["test_loss"] for r in earlier if r["kind"] == "epoch" and math.isfinite(r["test_loss"])]
        self.best_test_loss = min(test_losses, default=math.inf)
        self.final_test_loss = test_losses[-1] if test_losses else math.nan
        self.checkpoint_logged = newest_checkpoint_step(run_dir)  # earlier launches logged theirs
        mode = wandb_mode(wandb_cfg.mode)
        self.wandb = None
        if mode != "disabled":
            self.wandb = WandbRun(wandb_cfg, mode, run_dir, run_id, config | {"job": job_facts(hosts)})
            self.wandb.log_missing(earlier)

    def log(self, record: dict[str, Any], images: dict[str, Path] | None = None) -> None:
        if not self.metrics.is_new(record):
            return
        self.metrics.write(record)  # first: W&B then never holds a record that metrics.jsonl lacks
        if self.wandb is None:
            return
        extra = self.rank_times if record["kind"] == "train" else {}
        self.wandb.log(record, images or {}, {k: v for k, v in extra.items() if k != "step"})
        if extra:
            self.rank_times = {}
        if record["kind"] == "epoch" and math.isfinite(record["test_loss"]):
            self.best_test_loss = min(self.best_test_loss, record["test_loss"])
            self.final_test_loss = record["test_loss"]
            versus = {"baseline_test_loss": record["baseline_test_loss"], "final_test_loss_ratio": record["test_loss_ratio"]
                      } if "test_loss_ratio" in record else {}
            self.wandb.summarize({"best_test_loss": self.best_test_loss, "final_test_loss": self.final_test_loss, **versus})

    def log_ranks(self, times: RankTimes | None) -> None:
        """The per-rank step times of one window (W&B gets them with the next train record, one call); a
        `straggler:` line and a W&B alert for a rank that stays slow."""
        if times is None:
            return
        self.rank_times = {"step": times.step, **times.record()}
        for line in self.stragglers.update(times):
            print(line, flush=True)
            if self.wandb is not None:
                self.wandb.alert("straggler", line)

    def log_checkpoint(self) -> None:
        """The newest checkpoint, when it is newer than the last one logged (``wandb.log_checkpoints``)."""
        if self.wandb is None or self.cfg.log_checkpoints == "off":
            return
        found = list_checkpoints(self.run_dir.checkpoints)
        step = checkpoint_step(found[-1]) if found else -1
        if step > self.checkpoint_logged:
            self.checkpoint_logged = step
            self.wandb.log_file(found[-1], "checkpoint", ["latest", f"step-{step}"], {"step": step},
                                upload=self.cfg.log_checkpoints == "upload")

    def log_model(self, path: Path, step: int, epoch: int) -> None:
        """The final weights as this run's ``model`` artifact (aliases latest, final)."""
        if self.wandb is None:
            return
        self.wandb.log_file(path, "model", ["latest", "final"],
                            {"step": step, "epoch": epoch,
                             "test_loss": self.final_test_loss if math.isfinite(self.final_test_loss) else None,
                             "config_sha256": file_digest(self.run_dir.config) if self.run_dir.config.exists() else ""},
                            upload=True)

    def epoch_line(self, record: dict[str, Any]) -> None:
        console.write(console.epoch_line(record, self.epochs, self.baseline))  # above the progress bar while one is shown

    def message(self, line: str) -> None:
        console.write(line)

    def close(self) -> None:
        self.metrics.close()
        if self.wandb is not None:
            self.log_checkpoint()  # the one to resume from
            self.wandb.close()


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_NAME.match(path.name)[1])


def newest_checkpoint_step(run_dir: RunDir) -> int:
    found = list_checkpoints(run_dir.checkpoints)
    return checkpoint_step(found[-1]) if found else -1


class NullMonitor:
    """What ranks other than 0 get: every method does nothing."""

    def log(self, record: dict[str, Any], images: dict[str, Path] | None = None) -> None: ...
    def log_ranks(self, times: RankTimes | None) -> None: ...
    def log_model(self, path: Path, step: int, epoch: int) -> None: ...
    def epoch_line(self, record: dict[str, Any]) -> None: ...
    def message(self, line: str) -> None: ...
    def close(self) -> None: ...
