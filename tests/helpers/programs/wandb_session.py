"""One offline W&B session, as one start of a trainer makes: init (or resume) a run, log steps, finish.

    python -m tests.helpers.programs.wandb_session '{"id": ..., "config": {...}, "steps": [...], "settings": {...}}'

An ``image_step`` in the arguments also logs an 8x8 image at that step.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import wandb


def main(arguments: str) -> None:
    args = json.loads(arguments)
    settings = wandb.Settings(**args["settings"])
    run = wandb.init(project="ae-test", id=args["id"], group="g1", name="first",
                     resume="allow", config=args["config"], settings=settings)
    for step in args["steps"]:
        run.log({"train/loss": 1.0 / (step + 1), "epoch": step // 2}, step=step)
        if step == args.get("image_step"):
            pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
            run.log({"recon": wandb.Image(pixels)}, step=step)
    run.finish()


if __name__ == "__main__":
    main(sys.argv[1])
