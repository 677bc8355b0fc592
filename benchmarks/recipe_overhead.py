"""What the training recipe costs per optimizer step: the lr schedule, gradient clipping and the EMA
against the plain step, and the all-reduces gradient accumulation saves.

    python -m benchmarks.recipe_overhead                       # 9 rounds of 300 steps, batch 64, 1 thread
    python -m benchmarks.recipe_overhead --rounds 5 --steps 200 --no-accumulation

Part 1, one process, one thread: the seed's model at batch 64 takes ``engine.train_step`` with a
`Recipe` that has everything off (plain), then with one piece on (schedule = cosine + warmup;
clipping = optim.clip_grad_norm=1; ema = train.ema_decay=0.999). The contenders run interleaved,
round by round, each round's steps adjacent in time; it prints each contender's median step time
and, per piece, the median (min, max) of the per-round ratios piece / plain.

Part 2, two processes (gloo): train.accumulate=2 with DDP's no_sync on the first micro-batch (as
the trainer does) against the same step all-reducing after both micro-batches: gradient
all-reduces per optimizer step (counted by a DDP comm hook) and time per optimizer step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import time

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from ae_dist import engine
from ae_dist.config import ModelConfig, OptimConfig, TrainConfig
from ae_dist.models import build_model
from ae_dist.recipe.ema import EMA
from ae_dist.recipe.step import Recipe

BATCH = 64
PIECES = {"plain": {}, "schedule": {"schedule": "cosine", "warmup_steps": 100, "min_lr": 1e-5},
          "clipping": {"clip_grad_norm": 1.0}, "ema": {}}


def contender(name: str, steps: int):
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    optimizer = engine.build_optimizer(model, OptimConfig(), torch.device("cpu"))
    recipe = Recipe(OptimConfig(**PIECES[name]), ModelConfig(), 0, 1, 10 * steps, BATCH, torch.arange(BATCH),
                    EMA(model, 0.999) if name == "ema" else None)
    return model, optimizer, engine.FusedAdamStep(optimizer), recipe


def time_steps(state, images: torch.Tensor, first_step: int, steps: int) -> float:
    model, optimizer, step_optimizer, recipe = state
    started = time.perf_counter()
    for step in range(first_step, first_step + steps):
        engine.train_step(model, images, optimizer, step_optimizer, TrainConfig(), recipe, step)
    return (time.perf_counter() - started) / steps


def part_one(rounds: int, steps: int) -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    images = torch.rand(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    states = {name: contender(name, steps) for name in PIECES}
    for state in states.values():  # warm-up: the first steps make the optimizer state
        time_steps(state, images, 1, 20)
    times: dict[str, list[float]] = {name: [] for name in PIECES}
    for r in range(rounds):
        order = list(PIECES) if r % 2 == 0 else list(PIECES)[::-1]  # alternate who goes first
        for name in order:
            times[name].append(time_steps(states[name], images, 21 + r * steps, steps))
    print(f"part 1: batch {BATCH}, 1 thread, {rounds} rounds x {steps} steps per contender, interleaved")
    for name in PIECES:
        print(f"  {name:9s} median step {statistics.median(times[name]) * 1e6:8.1f} us")
    for name in ("schedule", "clipping", "ema"):
        ratios = [ours / plain - 1 for ours, plain in zip(times[name], times["plain"])]
        print(f"  {name:9s} / plain: median {statistics.median(ratios):+.1%} (min {min(ratios):+.1%}, "
              f"max {max(ratios):+.1%})")


def _accumulation_rank(rank: int, port: int, steps: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    images = torch.rand(BATCH // 2, 1, 28, 28, generator=torch.Generator().manual_seed(rank))
    out = {}
    for name, skip_sync in (("no_sync", True), ("sync each", False)):
        torch.manual_seed(0)
        raw = build_model(ModelConfig())
        model = torch.nn.parallel.DistributedDataParallel(raw)
        calls = [0]

        def counted(state, bucket, calls=calls):
            calls[0] += 1
            return default_hooks.allreduce_hook(state, bucket)

        model.register_comm_hook(None, counted)
        optimizer = engine.build_optimizer(raw, OptimConfig(), torch.device("cpu"))
        recipe = Recipe(OptimConfig(), ModelConfig(), 0, 2, 10 * steps, BATCH, torch.arange(BATCH // 2) * 2 + rank)
        step_optimizer = engine.FusedAdamStep(optimizer)
        no_sync = model.no_sync
        if not skip_sync:
            model.no_sync = contextlib.nullcontext  # the same step, all-reducing after every micro-batch
        for step in range(1, 11):
            engine.train_step(model, images, optimizer, step_optimizer, TrainConfig(), recipe, step)
        calls[0] = 0
        torch_dist.barrier()
        started = time.perf_counter()
        for step in range(11, 11 + steps):
            engine.train_step(model, images, optimizer, step_optimizer, TrainConfig(), recipe, step)
        out[name] = ((time.perf_counter() - started) / steps, calls[0] / steps)
        model.no_sync = no_sync
    if rank == 0:
        results.update(out)
    torch_dist.destroy_process_group()


def part_two(steps: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_accumulation_rank, args=(port, steps, results), nprocs=2)
        print(f"part 2: 2 processes (gloo, 1 thread each), train.accumulate=2, global batch {BATCH}, {steps} steps")
        for name, (seconds, reduces) in results.items():
            print(f"  {name:9s} {reduces:.2f} gradient all-reduces per optimizer step, {seconds * 1e3:.2f} ms per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--no-accumulation", action="store_true", help="skip part 2 (two processes)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at the start")
    part_one(args.rounds, args.steps)
    if not args.no_accumulation:
        part_two(args.steps)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
