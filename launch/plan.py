"""A training config plus sweeps -> one config per run, checked; no scheduler, no torch (the laptop plans too).

    --sweep optim.lr=1e-3,3e-3 --sweep model.hidden=[128,64,12],[64,32,8]   # the product: 4 runs

Each point of a sweep trains in its own folder below `run.dir` (named after its values) and all
points log to one W&B group. Points that would share a config or a folder are refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shlex
from pathlib import Path

from ae_dist.config import Config, build_config, check_world_size, to_flat
from ae_dist.errors import UsageError
from launch import shell


def split_values(text: str) -> list[str]:
    """'1e-3,3e-3' -> ['1e-3', '3e-3']; commas inside brackets stay: '[128,64],[64,32]'."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return [v.strip() for v in [*values, current]]


def parse_sweeps(items: list[str]) -> list[tuple[str, list[str]]]:
    sweeps: list[tuple[str, list[str]]] = []
    for item in items:
        shell.check_name(item, "--sweep")  # sweep values name folders and travel over SSH
        key, sep, text = item.partition("=")
        values = split_values(text) if sep else []
        if not key or not values or any(not v for v in values):
            raise UsageError("sweep is not key=value,value", item, "write e.g. --sweep optim.lr=1e-3,3e-3")
        if key in (k for k, _ in sweeps):
            raise UsageError("key swept twice", key, "give each key one --sweep with all its values")
        if len(set(values)) != len(values):
            raise UsageError("a value appears twice in the sweep", item, "list each value once")
        sweeps.append((key, values))
    return sweeps


DATA_PATHS = ("root", "path", "labels", "test_path", "test_labels", "cache_dir")


def _absolute(config: Config) -> Config:
    """Paths resolved against the submitting folder, so every task writes to the same place."""
    train = config.train
    if train.resume not in ("auto", "changed", "never"):
        train = dataclasses.replace(train, resume=os.path.abspath(train.resume))
    data = {key: os.path.abspath(getattr(config.data, key)) for key in DATA_PATHS if getattr(config.data, key)}
    return dataclasses.replace(config, train=train,
                               run=dataclasses.replace(config.run, dir=os.path.abspath(config.run.dir)),
                               data=dataclasses.replace(config.data, **data))


def plan_runs(config: Config, sweeps: list[tuple[str, list[str]]], world_size: int) -> list[Config]:
    """One config per run: the config itself, or one per point of the sweep (own run.dir, one W&B group)."""
    shell.check_folder(config.run.dir, "run.dir")
    config = _absolute(config)
    if not sweeps:
        check_world_size(config, world_size)
        return [config]
    root = Path(config.run.dir)
    group = config.wandb.group or f"sweep-{root.name}"
    runs: list[Config] = []
    by_values: dict[tuple, str] = {}
    by_folder: dict[str, str] = {}
    for point in itertools.product(*(values for _, values in sweeps)):
        chosen = dict(zip((key for key, _ in sweeps), point))
        text = ",".join(f"{key}={value}" for key, value in chosen.items())
        name = ",".join(f"{key}={re.sub(r'[^A-Za-z0-9._+-]', '_', value)}" for key, value in chosen.items())
        flat = to_flat(config) | chosen | {"run.dir": str(root / name), "wandb.group": group}
        run_config = build_config(flat, "--sweep")
        check_world_size(run_config, world_size)
        values = tuple(to_flat(run_config)[key] for key in chosen)
        for seen, key, what in ((by_values, values, "give the same config"), (by_folder, name, f"share the folder {name}")):
            if key in seen:
                raise UsageError(f"sweep points {shlex.quote(seen[key])} and {shlex.quote(text)} {what}", "--sweep",
                                 "list each value once, with names that differ in letters, digits or ._+-")
            seen[key] = text
        runs.append(run_config)
    return runs
