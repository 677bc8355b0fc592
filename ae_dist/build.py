"""Everything the training loop needs, built once per start: data, model, optimizer, resumed state.

`build` seeds, loads both splits, builds the model and optimizer, resumes from the newest
complete checkpoint (or the one ``train.resume`` names), and only then writes the run
folder's config, so a command that is refused leaves the folder as it was.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ae_dist import checkpoint, data, engine
from ae_dist.config import Config, dump_yaml, to_dict
from ae_dist.dist import DistInfo, barrier
from ae_dist.errors import UsageError
from ae_dist.metrics import read_metrics
from ae_dist.models import build_model
from ae_dist.run_dir import RunDir


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

    def say(self, line: str) -> None:
        if self.info.is_main:
            print(line, flush=True)


def build(config: Config, info: DistInfo) -> Training:
    torch.manual_seed(config.train.seed)
    train_split, test_split = load_data(config, info)
    model = build_model(config.model).to(info.device)
    optimizer = engine.build_optimizer(model, config.optim, info.device)
    run_dir = RunDir(Path(config.run.dir))
    resolved = to_dict(config)
    checkpointer = checkpoint.Checkpointer(run_dir.checkpoints, config.checkpoint.every_steps, config.checkpoint.keep,
                                           resolved, writes=info.is_main)
    warn = (lambda line: print(line, file=sys.stderr, flush=True)) if info.is_main else (lambda line: None)
    state = resume(config, run_dir, model, optimizer, resolved, warn)
    training = Training(config, info, run_dir, model, optimizer, train_split, test_split, state, checkpointer)
    if state.resumed_from is not None:
        checkpointer.saved_step = state.step
        training.say(f"resumed from {state.resumed_from} (epoch {state.epoch + 1}, step {state.step})")
    if info.is_main:  # after resume(): a command refused there leaves the run's config.yaml as it was
        prepare_run_dir(run_dir, config)
    return training


def load_data(config: Config, info: DistInfo) -> tuple[data.Split, data.Split]:
    """Rank 0 first (it may download), then the others; both splits moved to the device."""
    splits = None
    if info.is_main:
        splits = data.load_split(config.data, train=True), data.load_split(config.data, train=False)
    barrier(info)
    if splits is None:
        splits = data.load_split(config.data, train=True), data.load_split(config.data, train=False)
    return splits[0].to(info.device), splits[1].to(info.device)


def resume(config: Config, run_dir: RunDir, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           resolved: dict, warn: Callable[[str], None]) -> checkpoint.TrainState:
    """The state to continue from (weights, optimizer and RNGs loaded), or a fresh one."""
    mode = config.train.resume
    if mode == "never":
        if checkpoint.list_checkpoints(run_dir.checkpoints) or read_metrics(run_dir.metrics):
            raise UsageError("train.resume=never, but the run folder already holds a run", str(run_dir.root),
                             "continue it with train.resume=auto, or start over in an empty run.dir")
        found = None
    elif mode == "auto":
        found = checkpoint.load_latest(run_dir.checkpoints, warn=warn)
    else:
        found = checkpoint.load_path(Path(mode))
    own_run_id = run_dir.read_info().get("wandb_run_id", "")
    if found is None:
        return checkpoint.TrainState(wandb_run_id=own_run_id)
    path, saved = found
    checkpoint.check_compatible(saved["config"], resolved, path)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    checkpoint.set_rng_state(saved["rng"])
    # A checkpoint of another run folder (train.resume=PATH) starts this folder's own W&B run.
    ours = path.resolve().parent == run_dir.checkpoints.resolve()
    return checkpoint.TrainState(saved["epoch"], saved["batch"], saved["step"],
                                 saved.get("wandb_run_id", "") if ours else own_run_id,
                                 saved.get("skipped_steps", 0), *saved.get("epoch_loss", (0.0, 0)), resumed_from=path)


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
        tmp.replace(run_dir.config)
    except OSError as err:
        raise UsageError(f"cannot write the run folder ({err.strerror})", "run.dir", "choose a writable folder") from None
    if "git_sha" not in run_dir.read_info():
        run_dir.write_info(git_sha=_git_sha(), torch=torch.__version__, python=sys.version.split()[0],
                           command=" ".join(sys.argv))


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
