"""The steps of training: one epoch, one evaluation, the optimizer.

Nothing here reads the loss back to the host except at logging steps: the epoch's loss
is summed on the device and all-reduced at checkpoints and at the end of the epoch, so
an epoch resumed mid-way still reports the mean over all of its steps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

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
    """Adam as the seed's, with the fastest implementation the device has (fused: CUDA, and CPU since torch 2.4)."""
    impl = cfg.impl
    if impl == "auto":
        impl = "fused" if device.type in _get_fused_kernels_supported_devices() else "foreach"
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[impl]
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **options)


class FusedAdamStep:
    """``optimizer.step()`` of a fused single-group `torch.optim.Adam`, minus its per-call Python.

    At batch 64 on a CPU the fused kernel takes about 180 us and ``Optimizer.step`` wraps it in
    about 150 us of Python (hooks, profiler labels, re-grouping the tensors by device each call).
    This issues the same two kernels with the same arguments as ``torch.optim.Adam.step`` with
    ``fused=True``, so the weights and optimizer state are bitwise those of ``optimizer.step()``
    (tests/test_speed.py holds this). Any other case (not fused, amsgrad, AdamW, a tensor lr,
    several groups, a parameter without gradient or state yet) goes through ``optimizer.step()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        groups = optimizer.param_groups
        params = groups[0]["params"] if len(groups) == 1 else []
        self.enabled = (isinstance(optimizer, torch.optim.Adam) and len(groups) == 1 and bool(groups[0]["fused"])
                        and not groups[0]["amsgrad"] and not groups[0].get("decoupled_weight_decay", False)
                        and not groups[0]["differentiable"] and len({(p.device, p.dtype) for p in params}) == 1)

    def __call__(self) -> None:
        optimizer = self.optimizer
        group = optimizer.param_groups[0]
        params = group["params"]
        grads = [p.grad for p in params]
        states = [optimizer.state.get(p) for p in params]
        if (not self.enabled or not isinstance(group["lr"], float) or any(g is None for g in grads)
                or not all(states) or getattr(optimizer, "grad_scale", None) is not None):
            optimizer.step()
            return
        steps = [state["step"] for state in states]
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, [state["exp_avg"] for state in states],
                               [state["exp_avg_sq"] for state in states], [], steps, amsgrad=False,
                               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                               eps=group["eps"], maximize=group["maximize"], grad_scale=None, found_inf=None)


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
                    on_step: Callable[[float | None], None], checkpoint_due: Callable[[int], bool],
                    save_checkpoint: Callable[[], None]) -> EpochResult:
    """Train from batch ``state.batch`` of epoch ``state.epoch`` to its end, or to a stop request.

    ``on_step(loss_or_None)`` runs after every step (the loss only at logging steps);
    ``save_checkpoint()`` runs after the steps for which ``checkpoint_due(step)`` holds. Under
    nan_policy=stop, a NaN/Inf loss raises `Diverged` before anything is logged or saved past it.
    """
    model.train()
    optimizer_step = FusedAdamStep(optimizer)
    window = LossWindow(info.device)
    done, trained, started = 0, 0, time.perf_counter()

    def fold() -> None:
        """Add every rank's losses since the last fold to the epoch's sums in ``state`` (checkpointed)."""
        nonlocal done
        totals = all_reduce_(torch.stack([window.total, torch.tensor(float(done), dtype=torch.float64,
                                                                     device=info.device)]), info)
        state.epoch_loss_sum += float(totals[0])
        state.epoch_loss_count += int(totals[1])
        window.total.zero_()
        done = 0

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
            optimizer_step()
            window.add(loss, state.step)
            done += 1
            trained += 1
        logging = state.step % cfg.log_every == 0
        saving = checkpoint_due(state.step)
        if logging or saving:
            window.check(info)
        on_step(float(loss.detach()) if logging else None)
        if saving:
            fold()
            save_checkpoint()
        stopped_by = stop.should_stop(state.step)
        if stopped_by:
            window.check(info)  # the caller saves a checkpoint next
            fold()
            return EpochResult(float("nan"), 0.0, stopped_by)
    elapsed = time.perf_counter() - started
    window.check(info)
    fold()
    mean = state.epoch_loss_sum / state.epoch_loss_count if state.epoch_loss_count else float("nan")
    return EpochResult(mean, trained * batches.local_batch * info.world_size / max(elapsed, 1e-9), 0)


def _finite(loss: torch.Tensor, model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.isfinite(loss) and torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


class LossWindow:
    """The losses of the steps since the last check, left on the device: one list append per step.

    ``check`` (at logging and checkpoint steps, at a stop and at the epoch's end) adds them to
    the epoch's sum and raises `Diverged` naming the first step, on any rank, whose loss was
    NaN or Inf; its host sync happens only there.
    """

    def __init__(self, device: torch.device):
        self.losses: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.total = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, step: int) -> None:
        self.losses.append(loss.detach())
        self.steps.append(step)

    def check(self, info: DistInfo) -> None:
        first_bad = -1
        if self.losses:
            losses = torch.stack(self.losses)
            bad = ~torch.isfinite(losses)
            if bool(bad.any()):
                first_bad = self.steps[int(bad.nonzero()[0, 0])]
            self.total += losses.double().sum()
            self.losses.clear()
            self.steps.clear()
        _raise_if_diverged(first_bad, info)


def _raise_if_diverged(first_bad: int, info: DistInfo) -> None:
    """Every rank learns the first step with a non-finite loss on any rank (``first_bad`` -1: none here)."""
    marker = torch.tensor([first_bad if first_bad >= 0 else torch.iinfo(torch.int64).max], dtype=torch.int64)
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
