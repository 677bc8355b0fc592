"""Latent codes and per-sample reconstruction errors of a run's data, in dataset order, on any number of ranks.

    python -m ae_dist.encode runs/digits                        # every split -> runs/digits/encode/<split>/
    python -m ae_dist.encode runs/digits --split test --weights best
    torchrun --nproc_per_node=2 -m ae_dist.encode runs/digits data.name=synthetic --out codes/synthetic

Writes ``codes.npy`` (N x latent_dim float32), ``errors.npy`` (per-sample mean squared error,
float32), ``labels.npy`` and ``index.npy`` (int64) and, last, ``manifest.json`` (run, weights and
their sha256, data digest, split, count) into ``OUT/<split>/`` (default OUT: ``RUN/encode``), and
``latent.png``. Each rank writes its own rows straight into the files; 1 rank and N ranks write
the same bytes. Stopped (exit 75, 130 for Ctrl-C) or killed, the same command continues where
it was, at any world size, and ends with the same files. Exit status: 0 done, 2 bad input, 75
stopped by a signal, 1 other failures (a full disk), each said in one `error:` line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ae_dist.dist.preemption import FINISHING, StopSignals, exit_status
from ae_dist.errors import reporting
from ae_dist.infer import cli
from ae_dist.infer.load import read_config

DESCRIPTION = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1]
PARTS = ("train", "val", "test", "all")


def parser() -> cli.Parser:
    made = cli.parser("ae_dist.encode", DESCRIPTION)
    made.add_argument("--split", default="all", choices=PARTS, help="the split(s) to encode (all: train, val if any, test)")
    made.add_argument("--out", type=Path, help="output folder, one subfolder per split (default: RUN/encode)")
    made.add_argument("--overwrite", action="store_true", help="replace results of another run, weights or dataset in --out")
    made.add_argument("--chunk-rows", type=cli.positive, default=4096,
                      help="rows per chunk: the unit of work and of resumption (a resume must use the same)")
    made.add_argument("--batch-size", type=cli.positive, help="rows per forward pass (default: train.eval_batch_size)")
    return made


@reporting
def main(argv: list[str] | None = None) -> int:
    stop = StopSignals.install()  # first thing: a stop during start-up means exit 75
    args = cli.parse(parser(), argv)
    config = read_config(args.run_dir, args.overrides)  # a bad folder or override: one line, before torch loads
    from ae_dist.infer import run as infer_run

    parts = [args.split] if args.split != "all" else ["train", *(["val"] if config.data.val_fraction > 0 else []), "test"]
    out = args.out or args.run_dir / "encode"
    jobs = [infer_run.Part(part, out / part, tuple(args.overrides)) for part in parts]
    results = infer_run.encode(args.run_dir, args.weights, args.overrides, jobs, stop,
                               chunk_rows=args.chunk_rows, batch_size=args.batch_size, overwrite=args.overwrite)
    if results.signal:
        stop.exiting()
        return exit_status(results.signal)
    stop.phase = FINISHING
    return 0


if __name__ == "__main__":
    sys.exit(main())
