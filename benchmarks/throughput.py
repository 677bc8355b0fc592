"""Throughput of ae-dist against the seed's loop and its peers, interleaved, on one machine.

    python -m benchmarks.throughput                      # CPU, batch 64, 3 rounds, 8 contenders (~5 minutes)
    python -m benchmarks.throughput --threads 1          # the same, one intra-op thread per process (a busy machine)
    python -m benchmarks.throughput --steps 2811 --only seed,ae-dist,minimal,minimal-ftz   # 3 epochs
    python -m benchmarks.throughput --device cuda --batch 4096 --steps 100 --warmup 20 --only seed,ae-dist

It writes 60,000 + 10,000 synthetic 28x28 images as FashionMNIST IDX files (torchvision's
``FashionMNIST/raw`` layout, so the seed's own ``datasets.FashionMNIST`` reads them), then
runs every contender once per round, each in a fresh process (A B C ... A B C ...), so
that a machine busy with something else slows every contender alike. Per run: steady-state
samples/s (the first ``--warmup`` steps left out), seconds from the command to the end of
the first step, and each process's peak RSS. It prints medians with min/max and the
ratios the throughput targets name. Contenders:

    seed             the seed's loop: torchvision dataset + ToTensor + DataLoader(shuffle=True), default Adam
    ae-dist          python -m ae_dist.train with its defaults (fused Adam, denormals flushed, a stop
                     check every 10 steps, a loss read every 100, a checkpoint every 500 steps)
    ae-dist-2        the same under torchrun --nproc_per_node=2 (same global batch)
    lightning        Lightning's Trainer over tensor-resident batches, the seed's Adam (the seed, ported)
    lightning-fused  the same with fused Adam: what is left is the framework's own per-step work
    lightning-dl     Lightning's Trainer over the seed's DataLoader, the seed's Adam (not in the default set)
    minimal          the shortest fast hand-written loop: tensor-resident data, fused Adam
    minimal-ftz      the same, flushing denormal floats to zero as ae-dist does
    ddp-2            the minimal loop in plain DistributedDataParallel under torchrun, 2 processes

ae-dist runs with ``wandb.mode=disabled`` (the others log nothing either) and is timed by
``benchmarks/ae_dist_probe.py``, which runs the trainer's ``main`` unchanged with a step clock.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.idx_files import has_fashion_mnist, write_fashion_mnist

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TRAIN_SIZE, TEST_SIZE = 60_000, 10_000


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    nproc: int
    command: list[str]


@dataclass
class Runs:
    reports: list[dict] = field(default_factory=list)  # rank 0's, one per round
    rss_mb: list[float] = field(default_factory=list)  # every process of every round
    failures: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data

def data_folder(root: Path) -> Path:
    """Synthetic images in torchvision's FashionMNIST/raw layout (benchmarks.idx_files), written once."""
    if not has_fashion_mnist(root):
        write_fashion_mnist(root, train=TRAIN_SIZE, test=TEST_SIZE)
    return root


# ---------------------------------------------------------------------------------------------- contenders

def torchrun(nproc: int, module: str, args: list[str]) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module, *args]


def ae_dist_args(data_root: Path, run_dir: Path, args: argparse.Namespace, nproc: int) -> list[str]:
    steps_per_epoch = TRAIN_SIZE // args.batch
    epochs = max(1, math.ceil(args.steps / steps_per_epoch))
    extra = ["wandb.images_every_epochs=0"] if epochs > 1 else []  # many short epochs: no pictures each
    if args.threads and nproc == 1:
        extra.append(f"train.threads={args.threads}")
    return ["data.name=fashion_mnist", f"data.root={data_root}", "data.download=false", f"train.epochs={epochs}",
            f"train.batch_size={args.batch}", f"train.device={args.device}", "wandb.mode=disabled",
            f"run.dir={run_dir}", *extra, *args.ae_dist_args]


def contenders(data_root: Path, runs_dir: Path, args: argparse.Namespace, round_index: int) -> list[Contender]:
    common = [str(data_root), "--device", args.device, "--batch", str(args.batch)]
    one = [
        Contender("seed", "seed loop (torchvision + ToTensor + DataLoader)", 1,
                  [PYTHON, "-m", "benchmarks.seed_loop", *common]),
        Contender("ae-dist", "ae-dist, 1 process", 1,
                  [PYTHON, "-m", "benchmarks.ae_dist_probe",
                   *ae_dist_args(data_root, runs_dir / f"ae-dist-{round_index}", args, 1)]),
        Contender("ae-dist-2", "ae-dist, torchrun 2 processes", 2,
                  torchrun(2, "benchmarks.ae_dist_probe",
                           ae_dist_args(data_root, runs_dir / f"ae-dist-2-{round_index}", args, 2))),
        Contender("lightning", "Lightning, tensor-resident data, seed's Adam", 1,
                  [PYTHON, "-m", "benchmarks.lightning_loop", *common, "--data", "tensor", "--adam", "seed"]),
        Contender("lightning-fused", "Lightning, tensor-resident data, fused Adam", 1,
                  [PYTHON, "-m", "benchmarks.lightning_loop", *common, "--data", "tensor", "--adam", "fused"]),
        Contender("lightning-dl", "Lightning, the seed's DataLoader, seed's Adam", 1,
                  [PYTHON, "-m", "benchmarks.lightning_loop", *common, "--data", "loader", "--adam", "seed"]),
        Contender("minimal", "minimal hand-written loop", 1, [PYTHON, "-m", "benchmarks.minimal_loop", *common]),
        Contender("minimal-ftz", "minimal hand-written loop + flush denormals", 1,
                  [PYTHON, "-m", "benchmarks.minimal_loop", *common, "--ftz"]),
        Contender("ddp-2", "plain DDP loop, torchrun 2 processes", 2, torchrun(2, "benchmarks.minimal_loop", common)),
    ]
    return [c for c in one if c.name in args.only]


def child_env(report: Path, args: argparse.Namespace, nproc: int) -> dict[str, str]:
    """The caller's environment less launcher, thread and W&B settings, plus the clock's inputs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "WANDB_", "TORCHELASTIC_", "SUBMITIT_", "BENCH_"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                         "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               WANDB_MODE="disabled", BENCH_OUT=str(report), BENCH_WARMUP=str(args.warmup),
               BENCH_BATCH=str(args.batch), BENCH_STEPS=str(args.steps), PYTHONUNBUFFERED="1")
    if args.threads and nproc == 1:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_once(contender: Contender, work: Path, args: argparse.Namespace,
             round_index: int) -> tuple[dict | None, list[float], str]:
    report = work / "reports" / f"{contender.name}-{round_index}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "runs" / f"{contender.name}-{round_index}", ignore_errors=True)  # a fresh ae-dist run
    ranks = [report] + [Path(f"{report}.rank{r}") for r in range(1, contender.nproc)]
    for path in ranks:
        path.unlink(missing_ok=True)
    env = child_env(report, args, contender.nproc)
    env["BENCH_T0"] = repr(time.time())
    try:
        done = subprocess.run(contender.command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, [], f"timed out after {args.timeout}s"
    if done.returncode != 0 or not all(p.exists() for p in ranks):
        return None, [], f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:] or done.stdout[-300:]}"
    loaded = [json.loads(p.read_text()) for p in ranks]
    if not loaded[0]["measured_steps"] or not math.isfinite(loaded[0]["samples_per_s"]):
        return None, [], f"no steady-state steps measured ({loaded[0]['steps']} steps run)"
    return loaded[0], [r["peak_rss_mb"] for r in loaded], ""


# ---------------------------------------------------------------------------------------------- report

def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)} .. {format(max(values), fmt)}]"


TARGETS = (  # (numerator, denominator, at least): the throughput targets
    ("ae-dist", "seed", 2.5),
    ("ae-dist", "lightning", 1.5),
    ("ae-dist", "lightning-fused", 1.5),
    ("ae-dist", "minimal", 0.9),
    ("ae-dist", "minimal-ftz", 0.9),
    ("ae-dist-2", "ddp-2", 1.0),
)


def print_table(results: dict[str, Runs], labels: dict[str, str], nprocs: dict[str, int], args: argparse.Namespace) -> None:
    rates = {name: [r["samples_per_s"] for r in runs.reports] for name, runs in results.items()}
    seed = statistics.median(rates["seed"]) if rates.get("seed") else float("nan")
    print(f"\n{'contender':<48} {'procs':>5}  {'samples/s median [min .. max]':<34} {'x seed':>6}  "
          f"{'first step s':<20} {'peak RSS MB/proc':<22}")
    for name, runs in results.items():
        ratio = statistics.median(rates[name]) / seed if rates[name] and seed == seed else float("nan")
        first = [r["first_step_s"] for r in runs.reports]
        print(f"{labels[name]:<48} {nprocs[name]:>5}  {spread(rates[name], ',.0f'):<34} {ratio:>6.2f}  "
              f"{spread(first, '.1f'):<20} {spread(runs.rss_mb, '.0f'):<22}")
        for failure in runs.failures:
            print(f"    failed run: {failure}")
    rows = [(a, b, floor) for a, b, floor in TARGETS if rates.get(a) and rates.get(b)]
    if rows:
        print("\nratios (median of medians; [min .. max] over rounds, each round's runs adjacent in time):")
    for a, b, floor in rows:
        per_round = [x / y for x, y in zip(rates[a], rates[b])]
        ratio = statistics.median(rates[a]) / statistics.median(rates[b])
        verdict = "met" if ratio >= floor else "NOT met"
        print(f"  {a:>9} / {b:<15} {ratio:5.2f}x  [{min(per_round):.2f} .. {max(per_round):.2f}]   "
              f"target >= {floor}: {verdict}")


def machine_line(args: argparse.Namespace) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else "cpu"
    return (f"{platform.machine()} {cores} cores, device {device}, torch {torch.__version__}, python "
            f"{platform.python_version()}; batch {args.batch}, {args.steps} steps per run, first {args.warmup} "
            f"left out, {args.rounds} rounds; threads per 1-process contender: {args.threads or 'its default'}")


# ---------------------------------------------------------------------------------------------- main

NAMES = ("seed", "ae-dist", "ae-dist-2", "lightning", "lightning-fused", "lightning-dl", "minimal", "minimal-ftz",
         "ddp-2")
DEFAULT = ("seed", "ae-dist", "ae-dist-2", "lightning", "lightning-fused", "minimal", "minimal-ftz", "ddp-2")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contender, interleaved (default 3)")
    parser.add_argument("--steps", type=int, default=937, help="optimizer steps per run (default 937: one epoch)")
    parser.add_argument("--warmup", type=int, default=100, help="first steps left out of the steady state")
    parser.add_argument("--batch", type=int, default=64, help="global batch (default 64, the seed's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--only", default=",".join(DEFAULT),
                        help=f"comma-separated subset of {','.join(NAMES)} (default: all but lightning-dl)")
    parser.add_argument("--workdir", help="where data, runs and reports go (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of the 1-process contenders (default 0: each one's own default, "
                             "this machine's cores); 2-process ones keep 1 per rank")
    parser.add_argument("--json", help="also write every run's report here")
    parser.add_argument("--ae-dist-args", nargs="*", default=[], metavar="key=value",
                        help="extra ae-dist overrides for both ae-dist contenders (e.g. train.compile=default)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(NAMES))
    if unknown or args.rounds < 1 or args.steps <= args.warmup or args.warmup < 1:
        parser.error(f"unknown contenders {unknown}" if unknown else "need rounds >= 1 and steps > warmup >= 1")
    if args.batch % 2 and ({"ae-dist-2", "ddp-2"} & set(args.only)):
        parser.error("the 2-process contenders need an even --batch")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shown = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"python -m benchmarks.throughput {shown}".rstrip())
    print(machine_line(args), flush=True)
    with tempfile.TemporaryDirectory(prefix="ae-dist-bench-") as scratch:
        work = Path(args.workdir or scratch).resolve()
        data_root = data_folder(work / "data")
        results: dict[str, Runs] = {}
        labels, nprocs = {}, {}
        try:
            for round_index in range(args.rounds):
                for contender in contenders(data_root, work / "runs", args, round_index):
                    labels[contender.name], nprocs[contender.name] = contender.label, contender.nproc
                    runs = results.setdefault(contender.name, Runs())
                    report, rss, failure = run_once(contender, work, args, round_index)
                    if report is None:
                        runs.failures.append(f"round {round_index + 1}: {failure}")
                        print(f"round {round_index + 1} {contender.name}: FAILED {failure}", flush=True)
                        continue
                    runs.reports.append(report)
                    runs.rss_mb.extend(rss)
                    print(f"round {round_index + 1} {contender.name:<12} {report['samples_per_s']:>9,.0f} samples/s  "
                          f"first step {report['first_step_s']:5.1f}s  peak RSS {max(rss):5.0f} MB", flush=True)
        except KeyboardInterrupt:  # gpu.sh's time limit: the rounds that finished still make a table
            print("interrupted: the table holds the runs that finished", flush=True)
            if results:
                results[list(results)[-1]].failures.append("interrupted")
        print_table(results, labels, nprocs, args)
        if args.json:
            Path(args.json).write_text(json.dumps({name: runs.reports for name, runs in results.items()}, indent=1))
    return 0 if all(not runs.failures for runs in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
