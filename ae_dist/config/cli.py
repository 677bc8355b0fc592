"""Command lines of the trainer's entry points: flags and dotted overrides in any order, one-line errors.

    python -m ae_dist.train train.epochs=1 --config digits run.dir=runs/x
    python -m ae_dist.train --config digits --print-config
    python -m ae_dist.evaluate runs/x data.root=/data

`Parser` is argparse with the project's error format: every mistake is one line
``error: <what> (<command>): <fix>`` and exit 2 (`ae_dist.errors.UsageError`), an unknown
``--flag`` that names a config key gets the override to write instead (``--epochs 3`` ->
``did you mean train.epochs=3?``), and ``--help`` lists every config key with the value it
takes in the config in effect (``--config``'s, else the packaged default.yaml). Nothing here
imports torch: help and config errors answer before anything heavy is loaded.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import NoReturn, get_origin

from ae_dist.config.files import find_config, packaged_names
from ae_dist.config.schema import Config, leaf_fields, load_config, suggest_key, to_flat
from ae_dist.config.types import choices
from ae_dist.errors import UsageError

OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)+=.*", re.DOTALL)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line, without abbreviations, with a config-key help epilog."""

    def __init__(self, *args, config_help: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.config_help = config_help
        self.argv: list[str] = []

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog, f"see {self.prog} --help")

    def format_help(self) -> str:
        if self.config_help:
            self.epilog = help_for(self.argv)
        return super().format_help()

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        """Flags and positionals in any order; an unknown flag is refused first, with the override it means."""
        self.argv = list(sys.argv[1:] if argv is None else argv)
        refuse_unknown_flags(self, self.argv)
        return self.parse_intermixed_args(self.argv)


def refuse_unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    known = parser._option_string_actions  # argparse keeps no public map of its options
    takes_value = {option for option, action in known.items() if action.nargs != 0}
    value_next = False
    for index, token in enumerate(argv):
        if value_next or token == "-" or not token.startswith("-") or _is_number(token):
            value_next = False
            continue
        if token == "--":
            return
        option, has_value, value = token.partition("=")
        if option in known:
            value_next = not has_value and option in takes_value
            continue
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if not has_value and following and not following.startswith("-") and not OVERRIDE.fullmatch(following):
            value = following
        raise UsageError(f"unknown option {option[:60]}", parser.prog, _fix_for(option, value, list(known)))


def _fix_for(option: str, value: str, options: list[str]) -> str:
    key = suggest_key(option) if option.startswith("--") else None
    if key is not None:
        return f"did you mean {key}={value[:60] or 'VALUE'}? (config keys are set as key=value)"
    close = difflib.get_close_matches(option, options, n=1)
    return f"did you mean {close[0]}?" if close else "see --help for the options and every config key"


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def is_override(token: str) -> bool:
    """``section.key=value`` (and not an existing path that merely holds an '=')."""
    return bool(OVERRIDE.fullmatch(token)) and not Path(token).exists()


def help_text(config: Config | None = None, source: str = "") -> str:
    """Every key, what it takes, its value in ``config`` (default: the dataclass defaults) and its meaning."""
    values = to_flat(config) if config is not None else {}
    lines = [f"config keys (YAML sections, or key=value anywhere on the command line); values as in {source or 'defaults'}:"]
    for key, (kind, f) in leaf_fields().items():
        value = values.get(key, f.default)
        text = ",".join(map(str, value)) if isinstance(value, tuple) else repr(value)
        word = "choice" if choices(kind) else "list" if get_origin(kind) is tuple else kind.__name__
        meaning = f.metadata["help"] + (f" [{' | '.join(c or repr(c) for c in choices(kind))}]" if choices(kind) else "")
        lines.append(f"  {key:<28} {word:<6} {text:<18} {meaning}")
    return "\n".join(lines)


def help_for(argv: list[str]) -> str:
    """The key list with the values of the config ``argv`` names (``--config``), else of the packaged default."""
    name = None
    for index, token in enumerate(argv):
        if token == "--config" and index + 1 < len(argv):
            name = argv[index + 1]
        elif token.startswith("--config="):
            name = token.partition("=")[2]
    try:
        return help_text(load_config(name), str(find_config(name)))
    except UsageError:
        return help_text(load_config(), str(find_config(None)))


def train_parser() -> Parser:
    parser = Parser(prog="python -m ae_dist.train", description="""\
Train an autoencoder: one process, torchrun, srun or a submitit job, unchanged.

  python -m ae_dist.train --config digits run.dir=runs/digits
  torchrun --nproc_per_node=2 -m ae_dist.train --config digits train.epochs=3
  python -m ae_dist.train --config digits optim.lr=3e-3 --print-config

The same command with the same run.dir resumes from the newest checkpoint. Exit status:
0 done, 2 bad input, 75 stopped by a signal after a checkpoint (130: Ctrl-C), 1 other failures.""")
    parser.add_argument("--config", metavar="NAME|PATH",
                        help=f"experiment: a packaged config by name ({', '.join(packaged_names())}) or a YAML file "
                             "(default: the packaged default.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="load the data, build the model, take two steps; write nothing, then exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, anywhere on the line")
    return parser


def evaluate_parser() -> Parser:
    parser = Parser(prog="python -m ae_dist.evaluate", config_help=False,
                    usage="python -m ae_dist.evaluate [-h] [--weights final|best|ema|STEP] RUN [key=value ...]",
                    description="""\
Test loss and pictures of a finished or running run, written to RUN/eval/.

  python -m ae_dist.evaluate runs/digits
  python -m ae_dist.evaluate runs/digits --weights best
  python -m ae_dist.evaluate runs/digits data.root=/scratch/data train.eval_batch_size=500""")
    parser.add_argument("run_dir", nargs="?", metavar="RUN", help="the run folder (its run.dir)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides of the run's config.yaml (e.g. data.root), anywhere on the line")
    parser.add_argument("--weights", metavar="final|best|ema|STEP",
                        help="final (model.pt) | best (model-best.pt) | ema (model-ema.pt) | STEP (the checkpoint of that "
                             "step); default: model.pt, else the newest complete checkpoint while the run trains")
    return parser


def train_args(argv: list[str] | None = None, parser: Parser | None = None) -> tuple[Config, argparse.Namespace]:
    """The trainer's arguments and the config they make: defaults, --config, then the overrides."""
    args = (parser or train_parser()).parse(argv)
    return load_config(args.config, args.overrides), args


def evaluate_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run folder and the overrides, whichever order they came in."""
    parser = evaluate_parser()
    return run_and_overrides(parser, parser.parse(argv))


def run_and_overrides(parser: Parser, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with its one run folder (``run_dir``) told apart from the overrides, whichever order they came in:
    the command line of every command that reads a run (evaluate, encode, score, export)."""
    tokens = [token for token in (args.run_dir, *args.overrides) if token is not None]
    runs = [token for token in tokens if not is_override(token)]
    if len(runs) != 1:
        raise UsageError(f"give one run folder, not {len(runs)}" + (f" ({', '.join(runs)[:120]})" if runs else ""),
                         parser.prog, f"write {parser.prog} RUN [key=value ...]")
    args.run_dir, args.overrides = Path(runs[0]), [token for token in tokens if token != runs[0]]
    return args
