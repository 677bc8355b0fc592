"""Rank 0's output in one object: each new record to metrics.jsonl first, then W&B, and the console.

Other ranks get `NullMonitor`, whose methods do nothing, so the loop never asks who it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ae_dist import console
from ae_dist.config import WandbConfig
from ae_dist.metrics import MetricsFile, read_metrics
from ae_dist.run_dir import RunDir
from ae_dist.wandb_run import WandbRun, wandb_mode


class Monitor:
    """Rank 0: writes each new record to metrics.jsonl, W&B and the console."""

    def __init__(self, run_dir: RunDir, wandb_cfg: WandbConfig, run_id: str, config: dict[str, Any], epochs: int):
        self.metrics = MetricsFile(run_dir.metrics)
        self.epochs = epochs
        mode = wandb_mode(wandb_cfg.mode)
        self.wandb = WandbRun(wandb_cfg, mode, run_dir, run_id, config) if mode != "disabled" else None
        if self.wandb is not None:
            self.wandb.log_missing(read_metrics(self.metrics.path))

    def log(self, record: dict[str, Any], images: dict[str, Path] | None = None) -> None:
        if not self.metrics.is_new(record):
            return
        self.metrics.write(record)  # first: W&B then never holds a record that metrics.jsonl lacks
        if self.wandb is not None:
            self.wandb.log(record, images or {})

    def epoch_line(self, record: dict[str, Any]) -> None:
        console.write(console.epoch_line(record, self.epochs))  # above the progress bar while one is shown

    def message(self, line: str) -> None:
        console.write(line)

    def close(self) -> None:
        self.metrics.close()
        if self.wandb is not None:
            self.wandb.close()


class NullMonitor:
    """What ranks other than 0 get: every method does nothing."""

    def log(self, record: dict[str, Any], images: dict[str, Path] | None = None) -> None: ...
    def epoch_line(self, record: dict[str, Any]) -> None: ...
    def message(self, line: str) -> None: ...
    def close(self) -> None: ...
