"""A W&B Table of a split's codes (code, label, error, thumbnail), logged to the run's own W&B run.

Rank 0 logs it once a split is encoded, to the W&B run whose id the run folder holds (the same
run that training logged to, online or offline, as ``wandb.mode`` says; ``wandb.mode=disabled``
logs nothing), so that W&B's embedding projector shows the codes. At most TABLE_ROWS rows, evenly
spaced over the split. The W&B rules of training apply: trouble is one warning line, never a
failed job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ae_dist.config import Config, to_dict
from ae_dist.data import Split
from ae_dist.monitor.wandb_run import WandbRun, one_line, wandb_mode, warn
from ae_dist.run.folder import RunDir
from ae_dist.run.identity import wandb_run_id

TABLE_ROWS = 1000


def log(run: Path, config: Config, folder: Path, split: Split, rows: int = TABLE_ROWS) -> bool:
    """Log the table; True when W&B took it."""
    mode = wandb_mode(config.wandb.mode)
    run_id = wandb_run_id(Path(run), create=False)
    if mode == "disabled" or not run_id:
        return False
    try:
        codes = np.load(folder / "codes.npy", mmap_mode="r", allow_pickle=False)
        errors = np.load(folder / "errors.npy", mmap_mode="r", allow_pickle=False)
        picked = np.unique(np.linspace(0, len(codes) - 1, min(rows, len(codes))).astype(np.int64)) if len(codes) else []
        w = WandbRun(config.wandb, mode, RunDir(Path(run)), run_id, to_dict(config))
        if w.run is None:
            return False

        def table():
            made = w.wandb.Table(columns=["index", "code", "label", "error", "thumbnail"])
            for i in picked:
                image = split.images[int(i)].numpy().transpose(1, 2, 0).squeeze(-1)
                made.add_data(int(i), [float(v) for v in codes[i]], int(split.labels[int(i)]), float(errors[i]),
                              w.wandb.Image(image))
            w.run.log({f"encode/{folder.name}": made})
            return True

        logged = bool(w._call(f"the encode table of {folder.name}", table))
        w.close()
        return logged
    except Exception as err:  # noqa: BLE001 (W&B trouble never fails the job)
        warn(f"W&B: the encode table of {folder.name} was not logged ({one_line(err)})")
        return False
