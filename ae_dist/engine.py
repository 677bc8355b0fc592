"""The pieces of training, as functions the loop in `ae_dist.trainer` calls: one step, one
evaluation, the optimizer.

Nothing here reads the loss back to the host: the loop's one collective (`ae_dist.sync`) sums the
epoch's loss on the device and checks it for NaN/Inf every few steps.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from ae_dist.config import OptimConfig, TrainConfig
from ae_dist.data import Split
from ae_dist.dist.group import DistInfo, all_reduce_
from ae_dist.recipe import objective
from ae_dist.recipe.step import Recipe, clip_gradients


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
                        and not groups[0]["differentiable"] and len({(p.device, p.dtype) for p in params}) == 1
                        and fused_adam_kernel_matches(params[0].device.type))

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


@functools.cache
def fused_adam_kernel_matches(device_type: str) -> bool:
    """Whether this torch has the private ``torch._fused_adam_`` and, called as `FusedAdamStep` calls it,
    it gives bitwise the weights and state of ``Adam(fused=True).step()``; checked once per process
    and device type on two 2-element parameters (a few milliseconds, no random numbers drawn).

    False (a torch without the op, one whose op takes other arguments or computes otherwise, one
    without fused Adam on this device): `FusedAdamStep` calls ``optimizer.step()`` throughout.
    """
    if not callable(getattr(torch, "_fused_adam_", None)):
        return False
    twins = [nn.Parameter(torch.tensor([0.5, -1.5], device=device_type)) for _ in range(2)]
    try:
        reference, ours = (torch.optim.Adam([p], lr=0.1, fused=True) for p in twins)
        fast = object.__new__(FusedAdamStep)  # its __call__ as is, without this check
        fast.optimizer, fast.enabled = ours, True
        for grad in ([0.25, -0.5], [0.125, 1.0]):  # the first step makes the state, the second is the op's
            for p in twins:
                p.grad = torch.tensor(grad, device=device_type)
            reference.step()
            fast()
        return torch.equal(*twins) and all(torch.equal(reference.state[twins[0]][k], ours.state[twins[1]][k])
                                           for k in ("step", "exp_avg", "exp_avg_sq"))
    except Exception:  # any failure of a private op (TypeError, RuntimeError, a renamed state key) means: don't use it
        return False


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model: nn.Module, images: torch.Tensor, optimizer: torch.optim.Optimizer, step_optimizer: FusedAdamStep,
               cfg: TrainConfig, recipe: Recipe | None = None, step: int = 0) -> tuple[torch.Tensor, bool]:
    """Optimizer step ``step`` (1-based) on ``images``: (the loss, left on the device; whether the update was applied).

    With a `Recipe`: gradients summed over ``train.accumulate`` micro-batches (DDP's all-reduce only
    on the last), the step's learning rate, gradient clipping, then the EMA. Under nan_policy=skip a
    step whose loss or gradients are not finite is not applied (every rank sees the same all-reduced
    gradients, so all of them skip it).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, images, cfg, recipe, step)
    if cfg.nan_policy == "skip" and not _finite(loss, model):
        return loss, False
    if recipe is not None:
        lr = recipe.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if recipe.optim.clip_grad_norm:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            recipe.logged["grad_norm"] = clip_gradients(grads, recipe.optim.clip_grad_norm)
    step_optimizer()
    if recipe is not None and recipe.ema is not None:
        recipe.ema.update()
    return loss, True


def accumulate_gradients(model: nn.Module, images: torch.Tensor, cfg: TrainConfig, recipe: Recipe | None,
                         step: int) -> torch.Tensor:
    """Forward and backward over the micro-batches; the mean loss. DDP syncs gradients on the last one only."""
    if recipe is None:
        with autocast(cfg, images.device):
            loss = F.mse_loss(model(images).float(), images)
        loss.backward()
        return loss
    parts = recipe.micro_batches(images, step)
    total, terms = None, {}
    for i, (part, noise) in enumerate(parts):
        last = i == len(parts) - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with autocast(cfg, images.device):
                loss, part_terms = objective.loss(model, part, noise, recipe.model)
            (loss / len(parts) if len(parts) > 1 else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
        for name, value in part_terms.items():
            terms[name] = value if name not in terms else terms[name] + value
    if len(parts) > 1:
        total = total / len(parts)
        terms = {name: value / len(parts) for name, value in terms.items()}
    recipe.logged.update(terms)
    return total


def _finite(loss: torch.Tensor, model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.isfinite(loss) and torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int, cfg: TrainConfig, info: DistInfo) -> float:
    """Mean squared error over the whole split; each rank takes every W-th image."""
    model.eval()
    shard = split.images[info.rank:: info.world_size]
    total = torch.zeros((), dtype=torch.float64, device=info.device)
    for start in range(0, len(shard), batch_size):
        images = shard[start:start + batch_size].to(info.device, non_blocking=True).float().div_(255)
        with autocast(cfg, info.device):
            total += F.mse_loss(model(images).float(), images, reduction="sum").double()
    all_reduce_(total, info)
    return float(total) / split.images[0].numel() / len(split)


@torch.no_grad()
def encode_all(model: nn.Module, split: Split, batch_size: int) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device  # the split may stay on the host (memory-mapped)
    return torch.cat([model.encode(split.images[i:i + batch_size].to(device, non_blocking=True).float().div_(255))
                      for i in range(0, len(split), batch_size)])
