"""Train an autoencoder: one process, torchrun, srun or a submitit job, unchanged.

    python -m ae_dist.train --config digits run.dir=runs/digits
    torchrun --nproc_per_node=2 -m ae_dist.train --config digits run.dir=runs/digits
    python -m ae_dist.train --help          # every config key, its default and meaning
    python -m ae_dist.train --config digits --print-config     # the resolved config
    python -m ae_dist.train --config digits --dry-run          # data, model, two steps; nothing written

Running the same command again with the same run.dir resumes from the newest complete
checkpoint, or says the run is complete. Exit status: 0 done, 2 bad input, 75 stopped
by a signal after writing a checkpoint (run the same command again to continue), 130 the
same after Ctrl-C, 1 other failures (a diverged loss, a rank that stopped answering, a full
disk), each said in one `error:` line. Under torchrun each worker exits with these; torchrun
itself exits 1 for any non-zero worker (its report lists `exitcode : 75` per rank) or when
SIGTERM reaches torchrun itself, and with --max-restarts it starts the workers again, which
resume from the newest checkpoint.

This module is the command line only: the stop-signal handlers go in first, then the
arguments are parsed and the config validated, and only then is torch imported (with the
trainer, `ae_dist.trainer`), so `--help` and a config error answer at once.
"""

from __future__ import annotations

import argparse
import sys

from ae_dist.config import Config, cli, dump_yaml
from ae_dist.dist.preemption import StopSignals, exit_status
from ae_dist.errors import reporting


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    """Flags and key=value overrides in any order (`ae_dist.config.cli`); the config they make, validated."""
    return cli.train_args(argv, cli.train_parser())


@reporting
def main(argv: list[str] | None = None) -> int:
    stop = StopSignals.install()  # first thing: a stop during start-up means exit 75, not death by signal
    try:
        config, args = parse_args(argv)
        if args.print_config:
            print(dump_yaml(config), end="", flush=True)
            return 0
        from ae_dist import trainer

        if args.dry_run:
            return trainer.dry_run(config)
        result = trainer.run(config, stop)
        return 0 if result.status != "preempted" else exit_status(result.signal)
    finally:
        # Every path out (done, stopped, an error): the exit status is decided, and a stop signal from here
        # to the process's end (W&B's teardown at interpreter exit, where Python puts the default handlers
        # back) must not turn it into death by signal.
        stop.exiting()


if __name__ == "__main__":
    sys.exit(main())
