"""Step timestamps for one benchmark process, and the report it leaves for the driver.

Every contender calls `StepClock.tick()` after each optimizer step. The driver
(`benchmarks/throughput.py`) sets, in each child's environment:

    BENCH_T0      wall-clock time (time.time()) just before it started the command
    BENCH_OUT     where to write the JSON report (ranks > 0 add ``.rank<r>``)
    BENCH_WARMUP  steps left out of the steady state
    BENCH_BATCH   global batch (all ranks together)
    BENCH_STEPS   steps to run (the loops that do not count epochs)

Steady-state samples/s = global batch x steps BENCH_WARMUP+1 .. BENCH_STEPS / their wall
time, less any time between `pause()` and `resume()` (ae-dist's end-of-epoch evaluation and
pictures, so that runs of many short epochs measure training only). Steps after BENCH_STEPS
(ae-dist finishing its epoch) are not counted. On CUDA the clock synchronizes at the edges
of what it measures and nowhere else.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class StepClock:
    def __init__(self, global_batch: int | None = None, warmup: int | None = None,
                 sync: Callable[[], None] | None = None):
        self.t0 = float(os.environ.get("BENCH_T0", time.time()))
        self.global_batch = global_batch or env_int("BENCH_BATCH", 64)
        self.warmup = env_int("BENCH_WARMUP", 100) if warmup is None else warmup
        self.budget = env_int("BENCH_STEPS", 0) or None  # None: every step counts
        self.end: float | None = None
        self.sync = sync or (lambda: None)
        self.steps = 0
        self.first_step_s = float("nan")
        self.window_start = 0.0
        self.paused_s = 0.0
        self.paused_at: float | None = None
        self.ticks: list[float] = []  # perf_counter after each step (diagnostics: the typical step)

    def tick(self) -> None:
        """After an optimizer step."""
        if self.end is not None:
            return
        self.steps += 1
        if self.steps == 1:
            self.sync()
            self.first_step_s = time.time() - self.t0
        if self.steps == self.warmup:
            self.sync()
            self.window_start = time.perf_counter()
        if self.steps == self.budget:
            self.sync()
            self.end = time.perf_counter()
        self.ticks.append(time.perf_counter())

    def pause(self) -> None:
        """Work that is not training starts (evaluation, pictures, an epoch-end checkpoint)."""
        self.sync()
        self.paused_at = time.perf_counter()

    def resume(self) -> None:
        if self.paused_at is not None and self.steps >= self.warmup and self.end is None:
            self.paused_s += time.perf_counter() - self.paused_at
        self.paused_at = None

    def report(self, **extra: Any) -> dict[str, Any]:
        """Call right after the last step (or while paused after it)."""
        if self.end is None and self.paused_at is None:
            self.sync()
        end = self.end or (time.perf_counter() if self.paused_at is None else self.paused_at)
        measured = self.steps - self.warmup
        elapsed = end - self.window_start - self.paused_s
        rate = measured * self.global_batch / elapsed if measured > 0 and elapsed > 0 else float("nan")
        gaps = sorted(b - a for a, b in zip(self.ticks[self.warmup - 1:], self.ticks[self.warmup:]))
        typical = self.global_batch / gaps[len(gaps) // 2] if gaps else float("nan")
        return {"samples_per_s": rate, "median_step_samples_per_s": typical, "first_step_s": self.first_step_s,
                "steps": self.steps,
                "measured_steps": max(measured, 0), "global_batch": self.global_batch,
                "peak_rss_mb": peak_rss_mb(), "pid": os.getpid(), **extra}

    def write(self, **extra: Any) -> None:
        """Write the report where the driver asked (nothing when run by hand), and one line to stderr."""
        report = self.report(**extra)
        out = os.environ.get("BENCH_OUT")
        rank = int(os.environ.get("RANK", "0"))
        if out:
            path = Path(out if rank == 0 else f"{out}.rank{rank}")
            path.write_text(json.dumps(report) + "\n", encoding="utf-8")
        print(f"[bench rank {rank}] {report['samples_per_s']:,.0f} samples/s steady, first step after "
              f"{report['first_step_s']:.2f}s, peak RSS {report['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over exec from the
    forked parent, so every child would report at least the driver's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def cuda_sync(device: str) -> Callable[[], None]:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.synchronize
    return lambda: None
