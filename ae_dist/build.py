"""Everything the training loop needs, built once per start: data, model, optimizer, resumed state.

`build` seeds, loads both splits, builds the model and optimizer, resumes from the newest
complete checkpoint (or the one ``train.resume`` names), and only then writes the run
folder's config, so a command that is refused leaves the folder as it was.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ae_dist import data, engine
from ae_dist.config import Config, dump_yaml, to_dict
from ae_dist.dist.group import DistInfo, barrier
from ae_dist.errors import UsageError
from ae_dist.models import build_model
from ae_dist.run import checkpoint, resume
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

    def say(self, line: str) -> None:
        if self.info.is_main:
            print(line, flush=True)


def build(config: Config, info: DistInfo) -> Training:
    """Data, model, optimizer, and the state to continue from, agreed by every rank; rank 0 then holds
    the run folder's lease and writes its config, unless the run is complete (nothing is rewritten)."""
    torch.manual_seed(config.train.seed)
    train_split, test_split = load_data(config, info)
    check_split_sizes(config, len(train_split))
    model = build_model(config.model).to(info.device)
    optimizer = engine.build_optimizer(model, config.optim, info.device)
    run_dir = RunDir(Path(config.run.dir))
    resolved = to_dict(config)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    warn = (lambda line: print(line, file=sys.stderr, flush=True)) if info.is_main else (lambda line: None)
    lease: Lease | None = None
    decision: resume.Decision | None = None

    def decide() -> dict:
        nonlocal lease, decision
        decision = resume.decide(config.train.resume, run_dir, resolved, shapes, warn)
        saved = decision.payload or {}
        if not is_complete(config, saved.get("epoch", 0), saved.get("step", 0)) or not run_dir.model.exists():
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
                                      resumed_from=path)
    checkpointer = checkpoint.Checkpointer(run_dir.checkpoints, config.checkpoint.every_steps, config.checkpoint.keep,
                                           resolved, writes=info.is_main)
    training = Training(config, info, run_dir, model, optimizer, train_split, test_split, state, checkpointer, lease)
    if state.resumed_from is not None:
        checkpointer.saved_step = state.step
        training.say(f"resumed from {state.resumed_from} (epoch {state.epoch + 1}, step {state.step})")
    if lease is not None and not is_complete(config, state.epoch, state.step):
        resume.record(run_dir, state.step, decision.changes if decision else {})
        prepare_run_dir(run_dir, config)
    return training


def is_complete(config: Config, epoch: int, step: int) -> bool:
    return epoch >= config.train.epochs or bool(config.train.max_steps and step >= config.train.max_steps)


def check_split_sizes(config: Config, train_images: int) -> None:
    if config.train.batch_size > train_images:
        error = UsageError(f"global batch {config.train.batch_size} is larger than the training split "
                           f"({train_images} images of {config.data.name}): no step could be taken",
                           "train.batch_size", f"use at most {train_images}")
        error.all_ranks_alike = True
        raise error


def load_data(config: Config, info: DistInfo) -> tuple[data.Split, data.Split]:
    """Rank 0 first (it may download), then the others; both splits moved to the device."""
    splits = None
    if info.is_main:
        splits = data.load_split(config.data, train=True), data.load_split(config.data, train=False)
    barrier(info)
    if splits is None:
        splits = data.load_split(config.data, train=True), data.load_split(config.data, train=False)
    return splits[0].to(info.device), splits[1].to(info.device)


def wrap(model: torch.nn.Module, config: Config, info: DistInfo) -> torch.nn.Module:
    """DDP across ranks (and torch.compile when asked); the unwrapped model stays what is saved."""
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids, static_graph=config.dist.static_graph,
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
        raise UsageError(f"cannot write the run folder ({err.strerror})", "run.dir", "choose a writable folder") from None
    if "torch" not in run_dir.read_info():
        run_dir.write_info(torch=torch.__version__, python=sys.version.split()[0])
