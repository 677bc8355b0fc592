"""Where one steady-state ae-dist training step spends its time.

    python -m benchmarks.profile_step                                    # 1 process, seed config, synthetic data
    torchrun --standalone --nproc_per_node=2 -m benchmarks.profile_step  # the DDP step, 2 processes
    python -m benchmarks.profile_step --ops                              # + torch.profiler's top operators
    python -m benchmarks.profile_step train.batch_size=4096 train.device=cuda

It builds the trainer's own pieces with ``ae_dist.build.build`` from the config and the
``key=value`` overrides and runs the trainer's own loop (``ae_dist.trainer.fit``) unchanged,
with a clock at the edges of each phase (CUDA: synchronized, which adds the sync it measures):

    data       gather the batch (``EpochBatches.epoch``: index_select of uint8 rows, float, /255)
    forward    model + MSE loss (``engine.train_step`` up to ``optimizer.zero_grad``)
    backward   zero_grad + autograd; under DDP this includes the gradient all-reduce it waits for
    optimizer  Adam (``engine.FusedAdamStep``: the fused fast path when it applies)
    loop       what ``fit`` does around them (loss window, logging, stop check, checkpoint decision)

Steps whose loop phase spans an epoch's end (evaluation, pictures, the epoch-end checkpoint) are
left out; checkpoints inside an epoch are off unless ``checkpoint.every_steps`` is given. Under
DDP a communication hook also times each gradient bucket's all-reduce, from the bucket being
ready to its reduced values, and a bare all-reduce of the same size is timed for comparison.
Data: ``synthetic`` (60,000 images, the FashionMNIST size) unless overridden.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

from ae_dist import data, engine, trainer
from ae_dist.build import Training, build
from ae_dist.config import Config, check_world_size, load_config
from ae_dist.dist.group import DistInfo, cpu_threads, distributed
from ae_dist.dist.preemption import StopSignals

PHASES = ("data", "forward", "backward", "optimizer", "loop")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="steps timed (default 400)")
    parser.add_argument("--warmup", type=int, default=100, help="steps run first, untimed")
    parser.add_argument("--ops", action="store_true", help="also print torch.profiler's operator table")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ae-dist config overrides")
    return parser.parse_args(argv)


class Enough(Exception):
    """Raised by the clock inside ``fit`` once it holds the steps it was asked for."""


class PhaseClock:
    """Timestamps at the phase edges of each step of ``fit``; whole steps become ``timings``.

    Edges: asking the batch iterator for a batch (data starts), getting it, ``zero_grad``
    inside ``train_step`` (forward ends), the optimizer step being called and returning, and the
    next request for a batch in the same epoch (the loop phase ends).
    """

    def __init__(self, steps: int, warmup: int, sync: Callable[[], None], profiler: torch.profiler.profile | None):
        self.steps, self.warmup, self.sync, self.profiler = steps, warmup, sync, profiler
        self.done = 0  # steps completed
        self.edges: list[float] = []  # this step's timestamps so far
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.on_warm: list[Callable[[], None]] = []  # called once the warm-up is over

    def mark(self) -> None:
        self.sync()
        self.edges.append(time.perf_counter())

    def batches(self, epoch: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The epoch's batches, timed; a step whose loop phase crosses into a new epoch is dropped."""
        self.edges = []
        while True:
            self.mark()
            if len(self.edges) == len(PHASES) + 1:  # the previous step, closed by this request (a skipped
                self.record()  # step, nan_policy=skip, has no optimizer edges and is left out)
            self.edges = self.edges[-1:]
            if len(self.timings["loop"]) == self.steps:
                raise Enough
            try:
                images = next(epoch)
            except StopIteration:
                return
            self.mark()
            yield images

    def record(self) -> None:
        self.done += 1
        if self.done == self.warmup:
            for hook in self.on_warm:
                hook()
        if self.done > self.warmup:
            for name, start, end in zip(PHASES, self.edges, self.edges[1:]):
                self.timings[name].append(end - start)
            if self.profiler is not None:
                self.profiler.step()

    def train_step(self, step: Callable) -> Callable:
        """``engine.train_step`` with edges at zero_grad and around the optimizer step."""
        def timed(model, images, optimizer, step_optimizer, cfg):
            real_zero_grad = optimizer.zero_grad

            def zero_grad(*args, **kwargs):
                self.mark()
                return real_zero_grad(*args, **kwargs)

            def optimizer_step():
                self.mark()
                step_optimizer()
                self.mark()

            optimizer.zero_grad = zero_grad
            try:
                return step(model, images, optimizer, optimizer_step, cfg)
            finally:
                del optimizer.zero_grad
        return timed


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


def enough_epochs(training: Training, steps: int) -> Config:
    """The config with as many epochs as ``steps`` need, with room for the steps left out at epoch ends."""
    cfg = training.config
    per_epoch = len(data.EpochBatches(training.train_split, cfg.train.batch_size, 0, 1, cfg.train.seed))
    epochs = math.ceil(steps * 1.1 / per_epoch) + 1
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=max(epochs, cfg.train.epochs)))


def time_steps(training: Training, clock: PhaseClock, bucket_seconds: list[float]) -> None:
    """The trainer's loop with the clock's edges patched in, until the clock has its steps."""
    info = training.info
    real_epoch, real_step, real_wrap = data.EpochBatches.epoch, engine.train_step, trainer.wrap

    def epoch(self, *args, **kwargs):
        return clock.batches(real_epoch(self, *args, **kwargs))

    def wrap(model, config, info):
        wrapped = real_wrap(model, config, info)
        if info.distributed:
            ddp = wrapped if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else wrapped._orig_mod
            ddp.register_comm_hook(None, timed_all_reduce_hook(bucket_seconds))
        return wrapped

    clock.on_warm.append(bucket_seconds.clear)
    data.EpochBatches.epoch, engine.train_step, trainer.wrap = epoch, clock.train_step(real_step), wrap
    try:
        with contextlib.redirect_stdout(io.StringIO()) if info.is_main else contextlib.nullcontext():
            trainer.fit(training, StopSignals())  # its start line and progress lines are not the report
    except Enough:
        pass
    else:
        raise RuntimeError(f"the run ended after {clock.done} steps, before {clock.steps} were timed")
    finally:
        data.EpochBatches.epoch, engine.train_step, trainer.wrap = real_epoch, real_step, real_wrap


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = ["data.name=synthetic", "wandb.mode=disabled", "run.progress=off", "checkpoint.every_steps=0",
                 *args.overrides]
    with tempfile.TemporaryDirectory(prefix="ae-dist-profile-") as scratch:
        if not any(o.startswith("run.dir=") for o in overrides):
            overrides.append(f"run.dir={scratch}/run")
        config = load_config(None, overrides)
        torch.set_flush_denormal(config.train.flush_denormal)  # as ae_dist.trainer.run does
        with distributed(config.train.device, config.dist.timeout_s) as info:
            check_world_size(config, info.world_size)
            if info.device.type == "cpu":
                torch.set_num_threads(cpu_threads(info.local_world_size, config.train.threads))
            training = build(config, info)
            training.config = enough_epochs(training, args.warmup + args.steps)
            sync = torch.cuda.synchronize if info.device.type == "cuda" else (lambda: None)
            profiler = None
            if args.ops:
                profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
                    [torch.profiler.ProfilerActivity.CUDA] if info.device.type == "cuda" else []))
                profiler.__enter__()
            clock = PhaseClock(args.steps, args.warmup, sync, profiler)
            bucket_seconds: list[float] = []
            time_steps(training, clock, bucket_seconds)
            if profiler is not None:
                profiler.__exit__(None, None, None)
            gradients = sum(p.numel() for p in training.model.parameters())
            bare = bare_all_reduce(gradients, info) if info.distributed else float("nan")
            if info.is_main:
                print_report(config, info, clock.timings, (bucket_seconds, gradients, bare), args)
                if profiler is not None:
                    sort = "self_cuda_time_total" if info.device.type == "cuda" else "self_cpu_time_total"
                    print(profiler.key_averages().table(sort_by=sort, row_limit=25))
    return 0


def bare_all_reduce(count: int, info: DistInfo) -> float:
    """Median seconds of one all-reduce of a buffer of ``count`` floats (all the gradients)."""
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


def print_report(config: Config, info: DistInfo, timings: dict[str, list[float]],
                 all_reduce: tuple[list[float], int, float], args: argparse.Namespace) -> None:
    """The phase table; under DDP, the bucket all-reduces and a bare one of (buckets, gradients, seconds)."""
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
        buckets, gradients, bare = all_reduce
        print(f"all-reduce per bucket (ready -> reduced, inside backward): median "
              f"{statistics.median(buckets) * 1e6:.0f} us over {len(buckets)} buckets; a bare all-reduce of all "
              f"{gradients} gradients: {bare * 1e6:.0f} us")


if __name__ == "__main__":
    sys.exit(main())
