"""The command lines of encode, score and export: a run folder, dotted overrides and flags, in any order."""

from __future__ import annotations

import argparse
from pathlib import Path

from ae_dist.config.cli import Parser, is_override
from ae_dist.errors import UsageError
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
    args = made.parse(argv)
    tokens = [token for token in (args.run_dir, *args.overrides) if token is not None]
    runs = [token for token in tokens if not is_override(token)]
    if len(runs) != 1:
        raise UsageError(f"give one run folder, not {len(runs)}" + (f" ({', '.join(runs)[:120]})" if runs else ""),
                         made.prog, f"write {made.prog} RUN [key=value ...]")
    args.run_dir, args.overrides = Path(runs[0]), [token for token in tokens if token != runs[0]]
    return args


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
