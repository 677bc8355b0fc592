"""The command lines of encode, score and export: a run folder, dotted overrides and flags, in any order."""

from __future__ import annotations

import argparse

from ae_dist.config.cli import Parser, run_and_overrides
from ae_dist.infer.load import WEIGHTS_HELP


def parser(prog: str, description: str) -> Parser:
    made = Parser(prog=f"python -m {prog}", config_help=False, description=description,
                  usage=f"python -m {prog} [-h] RUN [key=value ...] [options]")
    made.add_argument("run_dir", nargs="?", metavar="RUN", help="the run folder (its run.dir)")
    made.add_argument("overrides", nargs="*", metavar="key=value",
                      help="dotted overrides of the run's config.yaml (e.g. data.root, data.name), anywhere on the line")
    made.add_argument("--weights", default="final", metavar="final|best|ema|STEP", help=WEIGHTS_HELP)
    return made


def parse(made: Parser, argv: list[str] | None) -> argparse.Namespace:
    """The run folder and the overrides, whichever order they came in."""
    return run_and_overrides(made, made.parse(argv))


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
