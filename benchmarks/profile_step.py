"""Where one steady-state ae-dist training step spends its time.

    python -m benchmarks.profile_step                                    # 1 process, seed config, synthetic data
    torchrun --standalone --nproc_per_node=2 -m benchmarks.profile_step  # the DDP step, 2 processes
    python -m benchmarks.profile_step --ops                              # + torch.profiler's top operators
    python -m benchmarks.profile_step train.batch_size=4096 train.device=cuda

It builds the trainer's own pieces (``ae_dist.train.Trainer``: data, model, optimizer, the
DDP/compile wrapping; ``data.EpochBatches``) from the config and the ``key=value``
overrides, then runs the step of ``engine.train_one_epoch`` phase by phase with a timer
between phases (CUDA: synchronized, which adds the sync it measures):

    data       gather the batch (index_select of uint8 rows, float, /255)
    forward    model + MSE loss
    backward   autograd; under DDP this includes the gradient all-reduce it waits for
    optimizer  zero_grad + Adam (the fused fast path when it applies)
    loop       what train_one_epoch does around them (loss window, stop check, callbacks)

Under DDP a communication hook also times each gradient bucket's all-reduce, from the
bucket being ready to its reduced values, and a bare all-reduce of the same size is
timed for comparison. Data: ``synthetic`` (60,000 images, the FashionMNIST size) unless
overridden.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ae_dist import data, engine
from ae_dist.config import check_world_size, load_config
from ae_dist.dist import cpu_threads, distributed
from ae_dist.preemption import StopSignals
from ae_dist.train import Trainer

PHASES = ("data", "forward", "backward", "optimizer", "loop")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="steps timed (default 400)")
    parser.add_argument("--warmup", type=int, default=100, help="steps run first, untimed")
    parser.add_argument("--ops", action="store_true", help="also print torch.profiler's operator table")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ae-dist config overrides")
    return parser.parse_args(argv)


def timed_all_reduce_hook(seconds: list[float]):
    """A DDP communication hook: DDP's default all-reduce, timed from bucket ready to reduced values."""

    def timed_all_reduce(state, bucket):  # no annotations: DDP compares them with the GradBucket class itself
        started = time.perf_counter()
        tensor = bucket.buffer().div_(dist.get_world_size())
        future = dist.all_reduce(tensor, async_op=True).get_future()

        def done(fut: torch.futures.Future) -> torch.Tensor:
            seconds.append(time.perf_counter() - started)
            return fut.value()[0]

        return future.then(done)

    return timed_all_reduce


def time_steps(trainer: Trainer, model: torch.nn.Module, steps: int, warmup: int, sync: Callable[[], None],
               profiler: torch.profiler.profile | None, bucket_seconds: list[float]) -> dict[str, list[float]]:
    """The step of engine.train_one_epoch, with a timer between its phases."""
    cfg, info = trainer.config, trainer.info
    batches = data.EpochBatches(trainer.train_split, cfg.train.batch_size, info.rank, info.world_size, cfg.train.seed)
    optimizer_step = engine.FusedAdamStep(trainer.optimizer)
    window = engine.LossWindow(info.device)
    timings: dict[str, list[float]] = defaultdict(list)
    model.train()
    step, epoch = 0, 0
    with StopSignals(info) as stop:
        while step < warmup + steps:
            epoch_batches = batches.epoch(epoch)
            for _ in range(len(batches)):
                sync()
                t0 = time.perf_counter()
                images = next(epoch_batches)
                sync()
                t1 = time.perf_counter()
                with engine.autocast(cfg.train, info.device):
                    loss = F.mse_loss(model(images).float(), images)
                sync()
                t2 = time.perf_counter()
                trainer.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                sync()
                t3 = time.perf_counter()
                optimizer_step()
                sync()
                t4 = time.perf_counter()
                step += 1
                window.add(loss, step)
                if step % cfg.train.log_every == 0 or (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0):
                    window.check(info)
                stop.should_stop(step)
                t5 = time.perf_counter()
                if step == warmup:
                    bucket_seconds.clear()
                if step > warmup:
                    for name, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                        timings[name].append(seconds)
                    if profiler is not None:
                        profiler.step()
                if step == warmup + steps:
                    break
            epoch += 1
    return timings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = ["data.name=synthetic", "wandb.mode=disabled", "run.progress=off", *args.overrides]
    with tempfile.TemporaryDirectory(prefix="ae-dist-profile-") as scratch:
        config = load_config(None, [*overrides, f"run.dir={scratch}/run"] if not any(
            o.startswith("run.dir=") for o in overrides) else overrides)
        with distributed(config.train.device, config.dist.timeout_s) as info:
            check_world_size(config, info.world_size)
            if info.device.type == "cpu":
                torch.set_num_threads(cpu_threads(info.local_world_size, config.train.threads))
            torch.set_flush_denormal(config.train.flush_denormal)  # as ae_dist.train.run does
            trainer = Trainer(config, info)
            model = trainer.wrap(trainer.raw_model)
            bucket_seconds: list[float] = []
            if info.distributed:
                ddp = model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model._orig_mod
                ddp.register_comm_hook(None, timed_all_reduce_hook(bucket_seconds))
            sync = torch.cuda.synchronize if info.device.type == "cuda" else (lambda: None)
            profiler = None
            if args.ops:
                profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
                    [torch.profiler.ProfilerActivity.CUDA] if info.device.type == "cuda" else []))
                profiler.__enter__()
            timings = time_steps(trainer, model, args.steps, args.warmup, sync, profiler, bucket_seconds)
            if profiler is not None:
                profiler.__exit__(None, None, None)
            bare = bare_all_reduce(trainer, info) if info.distributed else float("nan")
            if info.is_main:
                print_report(config, info, timings, bucket_seconds, bare, args)
                if profiler is not None:
                    sort = "self_cuda_time_total" if info.device.type == "cuda" else "self_cpu_time_total"
                    print(profiler.key_averages().table(sort_by=sort, row_limit=25))
    return 0


def bare_all_reduce(trainer: Trainer, info) -> float:
    """Median seconds of one all-reduce of a buffer the size of all the gradients."""
    count = sum(p.numel() for p in trainer.raw_model.parameters())
    buffer = torch.zeros(count, device=info.device)
    seconds = []
    for i in range(60):
        started = time.perf_counter()
        dist.all_reduce(buffer)
        if info.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 10:
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def print_report(config, info, timings: dict[str, list[float]], buckets: list[float], bare: float,
                 args: argparse.Namespace) -> None:
    means = {name: statistics.fmean(timings[name]) for name in PHASES}
    medians = {name: statistics.median(timings[name]) for name in PHASES}
    total, typical = sum(means.values()), sum(medians.values())
    local_batch = config.train.batch_size // info.world_size
    print(f"ae-dist step profile: {info.world_size} process(es), device {info.device}, "
          f"{torch.get_num_threads()} thread(s) per process, global batch {config.train.batch_size} "
          f"({local_batch} per rank), model {config.model.name}, optim.impl={config.optim.impl}, "
          f"compile={config.train.compile}, precision={config.train.precision}; {args.steps} steps after {args.warmup}")
    print(f"{'phase':<10} {'median us':>10} {'share':>6} {'mean us':>9}")
    for name in PHASES:
        print(f"{name:<10} {medians[name] * 1e6:>10.0f} {medians[name] / typical:>6.1%} {means[name] * 1e6:>9.0f}")
    print(f"{'step':<10} {typical * 1e6:>10.0f} {'':>6} {total * 1e6:>9.0f}   = {config.train.batch_size / typical:,.0f} "
          f"samples/s from the medians, {config.train.batch_size / total:,.0f} from the means")
    if total > 1.15 * typical:
        print("(means well above medians: something else took this machine's cores now and then, or, under DDP, "
              "the stop check's all-reduce every 10 steps waits for the slower rank)")
    if info.distributed:
        print(f"all-reduce per bucket (ready -> reduced, inside backward): median "
              f"{statistics.median(buckets) * 1e6:.0f} us over {len(buckets)} buckets; a bare all-reduce of all "
              f"{sum(p.numel() for p in config_params(config))} gradients: {bare * 1e6:.0f} us")


def config_params(config) -> list[torch.Tensor]:
    from ae_dist.models import build_model

    return list(build_model(config.model).parameters())


if __name__ == "__main__":
    sys.exit(main())
