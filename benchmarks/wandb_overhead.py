"""What monitoring costs: ae-dist with its default W&B against ae-dist with W&B and per-rank timing off.

    python -m benchmarks.wandb_overhead                     # 1 and 2 processes, 5 rounds, one epoch each
    python -m benchmarks.wandb_overhead --rounds 9 --nprocs 2 --steps 600

Contenders, each in a fresh process (torchrun for 2), interleaved round by round as in
``benchmarks/throughput.py`` (same data, same step clock, same steady-state window):

    bare-N    wandb.mode=disabled and the per-rank step clock replaced by a no-op: the trainer
              without any of the monitoring
    wandb-N   the defaults: wandb.mode=offline, W&B's system monitor on, per-rank step times
              gathered every train.log_every steps, a reference artifact per checkpoint

It prints samples/s per contender and, per process count, the ratio wandb / bare: the median
of the per-round ratios (each round's two runs adjacent in time), with min and max.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.throughput import PYTHON, Contender, ae_dist_args, run_once, spread, torchrun, write_fashion_mnist

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


def probe(argv: list[str], bare: bool) -> int:
    """The trainer under the throughput probe's step clock; ``bare``: with a no-op per-rank clock."""
    from ae_dist import ranks
    from benchmarks import ae_dist_probe

    if bare:
        class NoClock(ranks.RankClock):
            def __init__(self, model, info):
                self.enabled, self.hosts = False, ["bare"] * info.world_size

        ranks.RankClock = NoClock
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
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ae-dist-wandb-bench-") as scratch:
        work = Path(args.workdir or scratch).resolve()
        data_root = write_fashion_mnist(work / "data")
        for round_index in range(args.rounds):
            for contender in contenders(data_root, work / "runs", args, round_index):
                report, _, failure = run_once(contender, work, args, round_index)
                if report is None:
                    failures.append(f"round {round_index + 1} {contender.name}: {failure}")
                    print(f"round {round_index + 1} {contender.name}: FAILED {failure}", flush=True)
                    continue
                rates.setdefault(contender.name, []).append(report["samples_per_s"])
                print(f"round {round_index + 1} {contender.name:<8} {report['samples_per_s']:>9,.0f} samples/s",
                      flush=True)
    print(f"\n{'contender':<10} samples/s median [min .. max]")
    for name, values in rates.items():
        print(f"{name:<10} {spread(values, ',.0f')}")
    for nproc in args.nprocs:
        bare, monitored = rates.get(f"bare-{nproc}", []), rates.get(f"wandb-{nproc}", [])
        if len(bare) == len(monitored) == args.rounds:
            ratios = [m / b for m, b in zip(monitored, bare)]
            print(f"wandb / bare, {nproc} process(es): {statistics.median(ratios):.3f} "
                  f"[{min(ratios):.3f} .. {max(ratios):.3f}] over {len(ratios)} rounds")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
