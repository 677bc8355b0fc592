"""Log STEPS steps to an offline W&B run, say ``logged``, then wait to be killed (with wandb-core).

    python -m tests.helpers.programs.wandb_log_until_killed DIR RUN_ID STEPS
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import wandb


def main(folder: str, run_id: str, steps: str) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project="p", id=run_id, mode="offline", dir=folder,
                     settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True))
    for step in range(int(steps)):
        run.log({"train/loss": 1.0 / (step + 1), "train/epoch": 1}, step=step)
    print("logged", flush=True)
    threading.Event().wait()  # until the test kills this process and wandb-core


if __name__ == "__main__":
    main(*sys.argv[1:])
