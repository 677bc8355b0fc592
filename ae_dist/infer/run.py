"""What encode and score run on every rank: the model, the process group, one encode pass per split.

The model and config are loaded before the ranks join, so a bad run folder or weights choice is
said once, by rank 0. Then each split is loaded, checked against the model's input shape, and
encoded (`ae_dist.infer.passes`); rank 0 draws the latent picture and, for a run with W&B, logs
a table of codes (`ae_dist.infer.table`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ae_dist import data
from ae_dist.config import Config
from ae_dist.dist.group import DistInfo, distributed, read_env
from ae_dist.dist.liveness import die_with_launcher
from ae_dist.dist.preemption import TRAINING, StopSignals
from ae_dist.errors import AeDistError, UsageError, as_error
from ae_dist.infer import passes
from ae_dist.infer.load import Weights, input_shape, load_model, read_config
from ae_dist.monitor import plots

LATENT_POINTS = 5000  # codes drawn in latent.png, at most


@dataclass
class Encoded:
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # part -> manifest of the finished split
    signal: int = 0  # the stop signal that ended the job early, 0 when every split is done
    model: torch.nn.Module | None = None
    config: Config | None = None
    weights: Weights | None = None
    info: DistInfo | None = None


def check_fits(split: data.Split, shape: tuple[int, ...], part: str) -> None:
    have = tuple(split.images.shape[1:])
    if have != tuple(shape):
        raise UsageError(f"the {part} images are {'x'.join(map(str, have))} (CxHxW), the model takes "
                         f"{'x'.join(map(str, shape))}", "data.name", "point data.* at images of the shape the run trained on")


@dataclass(frozen=True)
class Part:
    """One split to encode: which part, of the data that ``overrides`` name, into which folder."""

    part: str  # train | val | test
    folder: Path
    overrides: tuple[str, ...] = ()


def encode(run: Path, weights: str, overrides: list[str], parts: list[Part], stop: StopSignals, *,
           chunk_rows: int, batch_size: int | None, overwrite: bool) -> Encoded:
    """Encode each of ``parts`` (every rank calls this); the model is the run's with ``overrides``."""
    env = read_env()
    die_with_launcher(env)
    model, config, chosen = load_model(run, weights, overrides)
    configs = {part: read_config(run, list(part.overrides)) for part in parts}
    result = Encoded(model=model, config=config, weights=chosen)
    is_main = env.get("RANK", "0") == "0"
    say = print if is_main else (lambda line: None)
    try:
        with distributed(config.train.device, config.dist.timeout_s) as info:
            result.info = info
            if info.device.type == "cpu":  # one thread per rank unless train.threads says: the bytes depend on it
                torch.set_num_threads(config.train.threads or 1)
            model.to(info.device)
            for part in parts:
                part_config = configs[part]
                split = data.load_split(part_config.data, part.part)
                check_fits(split, input_shape(config), part.part)
                request = passes.Request(part.part, part.folder, chunk_rows, batch_size or config.train.eval_batch_size,
                                         overwrite, config.run.lease_stale_s)
                stop.phase = TRAINING  # from here a stop signal ends the job after the chunk in hand, work kept
                done = passes.encode_split(model, run, part_config, chosen, request, split, info, stop, say)
                if done.signal:
                    say(f"stopped by signal {done.signal} in the {part.part} split; finished chunks kept, "
                        "run the same command to continue")
                    result.signal = done.signal
                    return result
                result.manifests[part.part] = done.manifest or {}
                if done.computed:
                    say(f"encoded {len(split)} {part.part} samples into {part.folder} in {done.seconds:.1f} s "
                        f"({done.computed / max(done.seconds, 1e-9):.0f} samples/s, {info.world_size} rank(s))")
                else:
                    say(f"{part.part}: complete already in {part.folder} ({len(split)} samples); nothing rewritten")
                if info.is_main and done.computed:
                    draw_latent(part.folder, part_config, chosen)
                    from ae_dist.infer import table

                    table.log(run, part_config, part.folder, split)
            return result
    except (AeDistError, OSError) as err:
        known = as_error(err, str(parts[0].folder if parts else run))
        if known is None:
            raise
        if not known.all_ranks_alike and known.rank is None and int(env.get("WORLD_SIZE", "1")) > 1:
            known.rank = int(env.get("RANK", "0"))
        raise known from None


def draw_latent(folder: Path, config: Config, weights: Weights) -> None:
    import numpy as np

    codes = np.load(folder / "codes.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(folder / "labels.npy", mmap_mode="r", allow_pickle=False)
    step = max(1, len(codes) // LATENT_POINTS)
    if not len(codes):
        return
    try:
        plots.draw_latent(torch.from_numpy(np.array(codes[::step])), torch.from_numpy(np.array(labels[::step])),
                          folder / "latent.png", f"{folder.name} latent codes by class ({weights.source})",
                          data.CLASS_NAMES.get(config.data.name))
    except OSError as err:
        print(f"warning: latent.png not drawn ({os.strerror(err.errno or 0)})", flush=True)
