"""How long each entry point takes to answer `--help` and to refuse a bad config.

    python -m benchmarks.cli_latency                          # this checkout, 5 runs of each command
    python -m benchmarks.cli_latency --runs 7 --before DIR    # and an older checkout side by side

Each command runs in a fresh process (`python -m ...` with ``PYTHONPATH`` set to the checkout),
from an empty scratch folder, interleaved over the runs so a busy machine slows every column
alike; the figure is the median wall time with [min .. max]. Two references frame them:
`python -c pass` (the interpreter alone) and `python -c "import torch"` (what a command pays
when it imports torch before parsing). The bad config is ``train: {epochs: three}``: every
entry point must refuse it with exit 2; `--help` must exit 0. A command that exits otherwise
is shown with its status, not timed as a success.

Make an older checkout to compare with: ``mkdir DIR && git archive COMMIT | tar -x -C DIR``.
Measured on the 2-core dev machine under other work (load 6-14), before = commit 680e3f7
(torch and matplotlib imported before argparse ran), after = the lazy imports:

    seconds, median [min .. max] of 5 runs, 2 CPU(s), load 6.2
    command                       before                        after
    python -c pass                  0.15 [0.12 .. 0.41]           0.15 [0.11 .. 0.40]
    python -c "import torch"       12.33 [9.51 .. 26.02]         11.62 [8.63 .. 12.32]
    ae_dist.train --help           14.51 [10.74 .. 16.48]         0.45 [0.40 .. 0.78]
    ae_dist.train bad config       12.15 [10.50 .. 16.18]         0.50 [0.29 .. 0.56]
    ae_dist.evaluate --help        12.14 [9.83 .. 14.67]          0.37 [0.31 .. 0.54]
    ae_dist.evaluate bad config    12.36 [10.34 .. 18.15]         0.53 [0.37 .. 0.59]
    launch --help                  16.39 [10.42 .. 18.47]         0.61 [0.41 .. 0.87]
    launch bad config              15.25 [10.30 .. 17.37]         0.50 [0.38 .. 1.01]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BAD_CONFIG = "train:\n  epochs: three\n"


def commands(scratch: Path) -> list[tuple[str, list[str], int]]:
    """(label, arguments after `python`, the exit status it must give)."""
    bad = scratch / "bad.yaml"
    bad.write_text(BAD_CONFIG, encoding="utf-8")
    run = scratch / "bad-run"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text(BAD_CONFIG, encoding="utf-8")
    return [
        ("python -c pass", ["-c", "pass"], 0),
        ('python -c "import torch"', ["-c", "import torch"], 0),
        ("ae_dist.train --help", ["-m", "ae_dist.train", "--help"], 0),
        ("ae_dist.train bad config", ["-m", "ae_dist.train", "--config", str(bad)], 2),
        ("ae_dist.evaluate --help", ["-m", "ae_dist.evaluate", "--help"], 0),
        ("ae_dist.evaluate bad config", ["-m", "ae_dist.evaluate", str(run)], 2),
        ("launch --help", ["-m", "launch", "--help"], 0),
        ("launch bad config", ["-m", "launch", "--executor", "local", "--config", str(bad)], 2),
    ]


def time_once(python: str, args: list[str], checkout: Path, scratch: Path) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    result = subprocess.run([python, *args], cwd=scratch, env=env, capture_output=True, timeout=300)
    return time.perf_counter() - started, result.returncode


def shown(times: list[float], codes: list[int], expected: int) -> str:
    wrong = sorted({code for code in codes if code != expected})
    if wrong:
        return f"exit {','.join(map(str, wrong))} (expected {expected})"
    return f"{statistics.median(times):6.2f} [{min(times):.2f} .. {max(times):.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument("--before", type=Path, help="an older checkout, timed in a column of its own")
    parser.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    args = parser.parse_args(argv)
    checkouts = {"before": args.before.resolve(), "after": REPO} if args.before else {"this checkout": REPO}
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as folder:
        scratch = Path(folder)
        cases = commands(scratch)
        results = {(label, name): ([], []) for label, _, _ in cases for name in checkouts}
        for _ in range(args.runs):
            for label, command, _ in cases:
                for name, checkout in checkouts.items():
                    seconds, code = time_once(args.python, command, checkout, scratch)
                    results[label, name][0].append(seconds)
                    results[label, name][1].append(code)
    print(f"seconds, median [min .. max] of {args.runs} runs, {os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.1f}")
    print(f"{'command':<30}" + "".join(f"{name:<30}" for name in checkouts))
    for label, _, expected in cases:
        print(f"{label:<30}" + "".join(f"{shown(*results[label, name], expected):<30}" for name in checkouts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
