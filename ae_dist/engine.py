"""The steps of training: one epoch, one evaluation, the optimizer.

Nothing here reads the loss back to the host except at logging steps: the epoch's loss
is summed on the device and all-reduced once at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ae_dist.checkpoint import TrainState
from ae_dist.config import OptimConfig, TrainConfig
from ae_dist.data import EpochBatches, Split
from ae_dist.dist import DistInfo, all_reduce_
from ae_dist.preemption import StopSignals


class Diverged(RuntimeError):
    def __init__(self, step: int):
        super().__init__(f"loss is NaN or Inf at step {step}")
        self.step = step


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Adam:
    """Adam as the seed's, with the fastest implementation the device has."""
    impl = cfg.impl
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "foreach"
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[impl]
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **options)


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class EpochResult:
    loss: float  # mean over every sample every rank saw this epoch (nan when stopped early)
    samples_per_s: float
    stopped_by: int  # signal number that stopped the epoch at a step boundary, else 0


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: EpochBatches, state: TrainState,
                    cfg: TrainConfig, info: DistInfo, stop: StopSignals,
                    on_step: Callable[[float | None], None], checkpoint_due: Callable[[], None]) -> EpochResult:
    """Train from batch ``state.batch`` of epoch ``state.epoch`` to its end, or to a stop request.

    ``on_step(loss_or_None)`` runs after every step (the loss only at logging steps);
    ``checkpoint_due()`` runs when ``checkpoint.every_steps`` says so.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=info.device)
    done, started = 0, time.perf_counter()
    for images in batches.epoch(state.epoch, start=state.batch):
        with autocast(cfg, info.device):
            loss = F.mse_loss(model(images).float(), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.batch += 1
        state.step += 1
        if cfg.nan_policy == "skip" and not _finite(loss, model):
            state.skipped_steps += 1  # every rank sees the same all-reduced gradients, so all skip
        else:
            optimizer.step()
            loss_sum += loss.detach()
            done += 1
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), state.step, first_bad)
        logging = state.step % cfg.log_every == 0
        if logging:
            _raise_if_diverged(first_bad, info)
        on_step(float(loss.detach()) if logging else None)
        checkpoint_due()
        stopped_by = stop.should_stop(state.step)
        if stopped_by:
            return EpochResult(float("nan"), 0.0, stopped_by)
    elapsed = time.perf_counter() - started
    _raise_if_diverged(first_bad, info)
    totals = all_reduce_(torch.stack([loss_sum, torch.tensor(float(done), dtype=torch.float64, device=info.device)]), info)
    mean = float(totals[0] / totals[1]) if totals[1] else float("nan")
    return EpochResult(mean, done * batches.local_batch * info.world_size / max(elapsed, 1e-9), 0)


def _finite(loss: torch.Tensor, model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.isfinite(loss) and torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


def _raise_if_diverged(first_bad: torch.Tensor, info: DistInfo) -> None:
    """Every rank learns the first step with a non-finite loss on any rank."""
    marker = torch.where(first_bad < 0, torch.iinfo(torch.int64).max, first_bad).view(1).clone()
    if info.distributed:
        marker = marker.to(info.device if info.backend == "nccl" else "cpu")
        all_reduce_(marker, info, torch.distributed.ReduceOp.MIN)
    if int(marker) != torch.iinfo(torch.int64).max:
        raise Diverged(int(marker))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int, cfg: TrainConfig, info: DistInfo) -> float:
    """Mean squared error over the whole split; each rank takes every W-th image."""
    model.eval()
    shard = split.images[info.rank:: info.world_size]
    total = torch.zeros((), dtype=torch.float64, device=info.device)
    for start in range(0, len(shard), batch_size):
        images = shard[start:start + batch_size].float().div_(255)
        with autocast(cfg, info.device):
            total += F.mse_loss(model(images).float(), images, reduction="sum").double()
    all_reduce_(total, info)
    return float(total) / split.images[0].numel() / len(split)


@torch.no_grad()
def encode_all(model: nn.Module, split: Split, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model.encode(split.images[i:i + batch_size].float().div_(255))
                      for i in range(0, len(split), batch_size)])
