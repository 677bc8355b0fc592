"""What monitoring costs: ae-dist with its default W&B against ae-dist with W&B and per-rank timing off.

    python -m benchmarks.wandb_overhead                     # 1 and 2 processes, 5 rounds, one epoch each
    python -m benchmarks.wandb_overhead --rounds 9 --nprocs 2 --steps 600

Contenders, each in a fresh process (torchrun for 2), interleaved round by round as in
``benchmarks/throughput.py`` (same data, same step clock, same steady-state window):

    bare-N    wandb.mode=disabled and the per-rank step clock replaced by a no-op: the trainer
              without any of the monitoring
    wandb-N   the defaults: wandb.mode=offline, W&B's system monitor on, per-rank step times
              gathered every train.log_every steps, a reference artifact to the newest checkpoint

It prints samples/s and rank 0's CPU time per steady-state step (its children, wandb-core
and W&B's system monitor, included) per contender and, per process count, the ratios
wandb / bare: the median of the per-round ratios (each round's two runs adjacent in time),
with min and max. On a busy machine the ratios move by tens of percent from round to round;
the steady figure is the last one: the time rank 0 spends in the monitoring code (every
hook, the gather, each W&B call, timed in the wandb runs) plus the CPU time of W&B's own
processes, per step, as a share of the step's wall time.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.throughput import PYTHON, Contender, ae_dist_args, data_folder, run_once, spread, torchrun

PROBE = "benchmarks.wandb_overhead"  # this module, run as the probe with --bare-probe or --probe


def contenders(data_root: Path, runs: Path, args: argparse.Namespace, round_index: int) -> list[Contender]:
    found = []
    for nproc in args.nprocs:
        for name, mode in (("bare", "--bare-probe"), ("wandb", "--probe")):
            train_args = [*ae_dist_args(data_root, runs / f"{name}-{nproc}-{round_index}", args, nproc)]
            if name == "wandb":
                train_args.append("wandb.mode=offline")  # after ae_dist_args' wandb.mode=disabled: the later wins
            command = ([PYTHON, "-m", PROBE, mode, *train_args] if nproc == 1
                       else torchrun(nproc, PROBE, [mode, *train_args]))
            found.append(Contender(f"{name}-{nproc}", f"{name}, {nproc} process(es)", nproc, command))
    return found


MONITORING: dict[str, float] = {}  # seconds this process spent in each piece of monitoring code (wandb contender)


def timed(function: Callable, name: str) -> Callable:
    """``function``, adding the time each call takes to MONITORING[name]."""
    MONITORING[name] = 0.0

    @functools.wraps(function)
    def wrapper(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            MONITORING[name] += time.perf_counter() - started

    return wrapper


def time_monitoring() -> None:
    """Every piece of W&B and per-rank timing that runs in the training loop, wrapped by `timed`
    (the wrappers' own cost counts too: the figure errs high)."""
    from ae_dist.monitor import monitor, ranks, wandb_run

    for cls, names in ((ranks.RankClock, ("_forward", "_grad_ready", "step_done", "take", "times")),
                       (monitor.Monitor, ("log_ranks", "log_checkpoint")),
                       (wandb_run.WandbRun, ("log", "summarize", "alert", "log_file"))):
        for name in names:
            setattr(cls, name, timed(getattr(cls, name), f"{cls.__name__}.{name}"))


def cpu_seconds() -> tuple[float, ...]:
    """CPU seconds so far of this process (all its threads) and of its children (wandb-core and its monitor)."""
    import psutil

    me = psutil.Process()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        children += times.user + times.system
    return time.process_time(), children, *MONITORING.values()


def probe(argv: list[str], bare: bool) -> int:
    """The trainer under the throughput probe's step clock; ``bare``: with a no-op per-rank clock.

    The report also holds the CPU time per steady-state step of this process and of its
    children: on a machine that other work keeps busy, wall-clock throughput varies by tens of
    percent between runs, CPU time per step much less.
    """
    from ae_dist.monitor import ranks
    from benchmarks import ae_dist_probe
    from benchmarks.clock import StepClock

    tick, report = StepClock.tick, StepClock.report
    marks: dict[str, tuple[float, float]] = {}

    def counting_tick(clock: StepClock) -> None:
        tick(clock)  # after the budget the clock stands still at clock.budget steps
        if clock.steps in (clock.warmup, clock.budget):
            marks.setdefault("start" if clock.steps == clock.warmup else "end", cpu_seconds())

    def counting_report(clock: StepClock, **extra: object) -> dict:
        start, end = marks.get("start"), marks.get("end") or cpu_seconds()
        steps = (clock.budget if "end" in marks else clock.steps) - clock.warmup
        per_step = [float("nan")] * len(end)
        if start is not None and steps > 0:
            per_step = [(b - a) / steps * 1e6 for a, b in zip(start, end)]
        parts = dict(zip(MONITORING, per_step[2:]))
        return report(clock, cpu_us_per_step=per_step[0], children_cpu_us_per_step=per_step[1],
                      monitoring_us_per_step=sum(parts.values()), monitoring_parts=parts, **extra)

    StepClock.tick, StepClock.report = counting_tick, counting_report

    if bare:
        class NoClock(ranks.RankClock):
            def __init__(self, model, info):
                self.enabled, self.hosts = False, ["bare"] * info.world_size

        ranks.RankClock = NoClock
    else:
        time_monitoring()
    return ae_dist_probe.main(argv)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {PROBE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each contender, interleaved (default 5)")
    parser.add_argument("--steps", type=int, default=937, help="optimizer steps per run (default 937: one epoch)")
    parser.add_argument("--warmup", type=int, default=100, help="first steps left out of the steady state")
    parser.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--nprocs", default="1,2", help="process counts to compare at (default 1,2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of 1-process runs (default 1)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--workdir", help="where data, runs and reports go (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.nprocs = [int(n) for n in args.nprocs.split(",") if n.strip()]
    args.ae_dist_args = []
    if args.rounds < 1 or args.steps <= args.warmup or any(n < 1 or args.batch % n for n in args.nprocs):
        parser.error("need rounds >= 1, steps > warmup, and a batch that divides by each process count")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--probe"], ["--bare-probe"]):
        return probe(argv[1:], bare=argv[0] == "--bare-probe")
    args = parse_args(argv)
    print(f"python -m {PROBE} {' '.join(argv)}".rstrip(), flush=True)
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    costs: dict[str, list[float]] = {}  # (monitoring code + W&B's processes) per step / wall time per step
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ae-dist-wandb-bench-") as scratch:
        work = Path(args.workdir or scratch).resolve()
        data_root = data_folder(work / "data")
        for round_index in range(args.rounds):
            for contender in contenders(data_root, work / "runs", args, round_index):
                report, _, failure = run_once(contender, work, args, round_index)
                if report is None:
                    failures.append(f"round {round_index + 1} {contender.name}: {failure}")
                    print(f"round {round_index + 1} {contender.name}: FAILED {failure}", flush=True)
                    continue
                rates.setdefault(contender.name, []).append(report["samples_per_s"])
                cpu = report["cpu_us_per_step"] + report["children_cpu_us_per_step"]
                cpus.setdefault(contender.name, []).append(cpu)
                step_us = report["global_batch"] / report["samples_per_s"] * 1e6
                cost = report["monitoring_us_per_step"] + report["children_cpu_us_per_step"]
                if contender.name.startswith("wandb"):
                    costs.setdefault(contender.name, []).append(cost / step_us)
                print(f"round {round_index + 1} {contender.name:<8} {report['samples_per_s']:>9,.0f} samples/s  "
                      f"rank 0 CPU {report['cpu_us_per_step']:,.0f} us/step + children "
                      f"{report['children_cpu_us_per_step']:,.0f}; in monitoring code "
                      f"{report['monitoring_us_per_step']:,.1f} us/step", flush=True)
                if report["monitoring_parts"]:
                    print("    " + ", ".join(f"{name} {us:.1f}" for name, us in report["monitoring_parts"].items()
                                             if us >= 0.05), flush=True)
    print(f"\n{'contender':<10} {'samples/s median [min .. max]':<32} rank 0 CPU us/step, its children included")
    for name, values in rates.items():
        print(f"{name:<10} {spread(values, ',.0f'):<32} {spread(cpus[name], ',.0f')}")
    for nproc in args.nprocs:
        for what, table, better in (("throughput", rates, "higher"), ("CPU per step", cpus, "lower")):
            bare, monitored = table.get(f"bare-{nproc}", []), table.get(f"wandb-{nproc}", [])
            if len(bare) == len(monitored) == args.rounds:
                ratios = [m / b for m, b in zip(monitored, bare)]
                print(f"wandb / bare, {nproc} process(es), {what} ({better} is better): {statistics.median(ratios):.3f} "
                      f"[{min(ratios):.3f} .. {max(ratios):.3f}] over {len(ratios)} rounds")
    for name, fractions in costs.items():
        print(f"{name}: monitoring code in rank 0's loop plus W&B's own processes, per step: "
              f"{statistics.median(fractions):.2%} of the step [{min(fractions):.2%} .. {max(fractions):.2%}]")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
