"""Everything the training loop needs, built once per start: data, model, optimizer, resumed state.

`build` seeds, loads both splits, builds the model and optimizer, resumes from the newest
complete checkpoint (or the one ``train.resume`` names), and only then writes the run
folder's config, so a command that is refused leaves the folder as it was.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ae_dist import data, engine
from ae_dist.config import Config, dump_yaml, to_dict
from ae_dist.data.sources import PARTS
from ae_dist.dist.group import DistInfo, barrier
from ae_dist.errors import UsageError, os_fix
from ae_dist.models import build_model, parameter_count
from ae_dist.recipe.ema import EMA
from ae_dist.recipe.selection import Selection
from ae_dist.recipe.step import Recipe
from ae_dist.run import checkpoint, completion, resume
from ae_dist.run.agree import check_every_rank_sees, load_agreed, on_rank0
from ae_dist.run.folder import RunDir
from ae_dist.run.lease import Lease, check_held


@dataclass
class Training:
    """One start of a run: what the loop reads and changes."""

    config: Config
    info: DistInfo
    run_dir: RunDir
    model: torch.nn.Module  # unwrapped: what checkpoints and model.pt hold
    optimizer: torch.optim.Optimizer
    train_split: data.Split
    test_split: data.Split
    state: checkpoint.TrainState
    checkpointer: checkpoint.Checkpointer
    lease: Lease | None  # rank 0's hold on the run folder (None elsewhere, and when nothing is written)
    val_split: data.Split | None = None  # data.val_fraction's rows (None: no validation)
    ema: EMA | None = None  # train.ema_decay's moving average of the weights
    selection: Selection = field(default_factory=Selection)  # best validation loss so far, patience

    def say(self, line: str) -> None:
        if self.info.is_main:
            print(line, flush=True)


def build(config: Config, info: DistInfo) -> Training:
    """Data, model, optimizer, and the state to continue from, agreed by every rank; rank 0 then holds
    the run folder's lease and writes its config, unless the run is complete (`completion.is_complete`: nothing
    is rewritten); a continuation of a complete run (a larger train.epochs) clears its completion record."""
    torch.manual_seed(config.train.seed)
    train_split, val_split, test_split = load_data(config, info)
    check_split_sizes(config, len(train_split))
    check_model_fits(config, train_split.shape)
    model = build_model(config.model, train_split.shape).to(info.device)
    optimizer = engine.build_optimizer(model, config.optim, info.device)
    run_dir = RunDir(Path(config.run.dir))
    resolved = to_dict(config)
    if train_split.digest:  # the dataset's identity is part of the run: other data is a config change
        resolved["data"]["digest"] = train_split.digest
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    warn = (lambda line: print(line, file=sys.stderr, flush=True)) if info.is_main else (lambda line: None)
    lease: Lease | None = None
    decision: resume.Decision | None = None

    def decide() -> dict:
        nonlocal lease, decision
        decision = resume.decide(config.train.resume, run_dir, resolved, shapes, warn)
        if not completion.is_complete(run_dir, config.train):
            lease = Lease(run_dir.root, config.run.lease_stale_s)
            lease.take()
        return {"path": str(decision.path) if decision.path else "", "token": lease.token if lease else ""}

    agreed = on_rank0(info, decide)
    payload, problem = (decision.payload, "") if info.is_main else load_agreed(run_dir, agreed["path"], agreed["token"],
                                                                               shapes)
    check_every_rank_sees(info, run_dir, problem)
    state = checkpoint.TrainState(wandb_run_id=run_dir.read_info().get("wandb_run_id", "") if info.is_main else "")
    if isinstance(payload, dict):
        path = Path(agreed["path"])
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        checkpoint.set_rng_state(payload["rng"])
        # A checkpoint of another run folder (train.resume=PATH) starts this folder's own W&B run.
        ours = path.resolve().parent == run_dir.checkpoints.resolve()
        state = checkpoint.TrainState(payload["epoch"], payload["batch"], payload["step"],
                                      payload.get("wandb_run_id", "") if ours else state.wandb_run_id,
                                      payload.get("skipped_steps", 0), *payload.get("epoch_loss", (0.0, 0)),
                                      resumed_from=path, selection=payload.get("selection", []))
    ema = EMA(model, config.train.ema_decay) if config.train.ema_decay else None
    if ema is not None and isinstance(payload, dict) and "ema" in payload:
        ema.load_state_dict(payload["ema"])  # (a run that turns EMA on when resumed starts it from the weights)
    state.ema = ema.state_dict() if ema is not None else None
    checkpointer = checkpoint.Checkpointer(run_dir.checkpoints, config.checkpoint.every_steps, config.checkpoint.keep,
                                           resolved, writes=info.is_main)
    training = Training(config, info, run_dir, model, optimizer, train_split, test_split, state, checkpointer, lease,
                        val_split if len(val_split) else None, ema, Selection.from_list(state.selection))
    if state.resumed_from is not None:
        checkpointer.saved_step = state.step
        training.say(f"resumed from {state.resumed_from} (epoch {state.epoch + 1}, step {state.step})")
    if lease is not None and not completion.reached(config.train, state.epoch, state.step, training.selection.stopped_early):
        completion.clear(run_dir)  # a continuation starts: not complete until its own wrap-up
        resume.record(run_dir, state.step, decision.changes if decision else {})
        prepare_run_dir(run_dir, config)
    return training


def recipe_of(cfg: Config, batches: data.EpochBatches, ema: EMA | None = None) -> Recipe:
    """The step's recipe for this start: the schedule's horizon is train.epochs x steps per epoch."""
    return Recipe(cfg.optim, cfg.model, cfg.train.seed, cfg.train.accumulate, cfg.train.epochs * len(batches),
                  cfg.train.batch_size, batches.positions(), ema)


def check_split_sizes(config: Config, train_images: int) -> None:
    if config.train.batch_size > train_images:
        error = UsageError(f"global batch {config.train.batch_size} is larger than the training split "
                           f"({train_images} images of {config.data.name}): no step could be taken",
                           "train.batch_size", f"use at most {train_images}")
        error.all_ranks_alike = True
        raise error


def check_model_fits(config: Config, shape: tuple[int, int, int]) -> None:
    """Refuse a model whose weights and Adam state alone would not fit in this machine's memory, saying its cost."""
    weights = parameter_count(config.model, shape)
    cost = weights * 4 * 4  # weights, gradients, Adam's two moments, float32
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if cost > memory // 2:
        key = "model.hidden" if config.model.name == "mlp" else "model.channels"
        raise UsageError(f"{config.model.name} at {'x'.join(map(str, shape))} has {weights:,} weights: "
                         f"{cost / 1e9:.1f} GB with gradients and Adam state, more than half this machine's "
                         f"{memory / 1e9:.0f} GB", key, "use a smaller data.size, model.name=conv, or narrower layers")


def load_data(config: Config, info: DistInfo) -> tuple[data.Split, data.Split, data.Split]:
    """(train, val, test), on the device when they fit there comfortably (else on the host, batches copied per step).

    The validation split is empty unless data.val_fraction > 0. Built-in datasets: rank 0 first (it may
    download), then the others. Folders and arrays: prepared first
    by every rank together when not yet prepared (`ae_dist.prepare`), then memory-mapped by each rank.
    """
    if config.data.name in ("folder", "array"):
        from ae_dist.prepare import prepare

        prepare(config.data, info, say=print if info.is_main else (lambda line: None))
        splits = tuple(data.load_split(config.data, part) for part in PARTS)
        if not len(splits[2]):
            raise UsageError("the test split is empty", "data.test_fraction",
                             "use data.test_fraction > 0 or give data.test_path")
    else:
        splits = None
        if info.is_main:
            splits = tuple(data.load_split(config.data, part) for part in PARTS)
        barrier(info)
        if splits is None:
            splits = tuple(data.load_split(config.data, part) for part in PARTS)
    return tuple(_placed(split, info) for split in splits)


def _placed(split: data.Split, info: DistInfo) -> data.Split:
    """On a CUDA device when it takes under a quarter of the device's free memory; else where it is (the host)."""
    if info.device.type != "cuda":
        return split
    free, _ = torch.cuda.mem_get_info(info.device)
    return split.to(info.device) if split.images.numel() < free // 4 else split


def wrap(model: torch.nn.Module, config: Config, info: DistInfo) -> torch.nn.Module:
    """DDP across ranks (and torch.compile when asked); the unwrapped model stays what is saved."""
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        # DDP's static_graph does not support no_sync (its reducer asserts): off under train.accumulate > 1
        static = config.dist.static_graph and config.train.accumulate == 1
        model = DistributedDataParallel(model, device_ids=ids, static_graph=static,
                                        gradient_as_bucket_view=config.dist.bucket_view)
    if config.train.compile != "off":
        model = torch.compile(model, mode=None if config.train.compile == "default" else "reduce-overhead")
    return model


def prepare_run_dir(run_dir: RunDir, config: Config) -> None:
    """Create the folder; write the resolved config and the run's provenance."""
    try:
        run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
        tmp = run_dir.root / ".config.yaml.tmp"
        tmp.write_text(dump_yaml(config), encoding="utf-8")
        check_held(run_dir.config.name)
        tmp.replace(run_dir.config)
    except OSError as err:
        raise UsageError(f"cannot write the run folder ({err.strerror})", "run.dir", os_fix(err)) from None
    if "torch" not in run_dir.read_info():
        run_dir.write_info(torch=torch.__version__, python=sys.version.split()[0])
