"""ae-dist's own command with a step clock: ``python -m benchmarks.ae_dist_probe`` + the trainer's arguments.

    python -m benchmarks.ae_dist_probe data.name=fashion_mnist data.root=DIR data.download=false ...
    torchrun --standalone --nproc_per_node=2 -m benchmarks.ae_dist_probe ...

It runs ``ae_dist.train.main`` unchanged; the only addition is a wrapper around
``engine.train_one_epoch`` whose ``on_step`` callback also ticks the clock, and which pauses
the clock between epochs (evaluation, pictures, the epoch-end checkpoint), so the steady
state is training steps only; checkpoints due inside an epoch stay in it.
"""

from __future__ import annotations

import sys

from ae_dist import engine, train
from benchmarks.clock import StepClock, cuda_sync


def main(argv: list[str]) -> int:
    config, _ = train.parse_args(argv)
    clock = StepClock(global_batch=config.train.batch_size,
                      sync=cuda_sync("cuda" if config.train.device != "cpu" else "cpu"))
    original = engine.train_one_epoch

    def timed_epoch(*args, on_step, **kwargs):
        def ticking(loss):
            on_step(loss)
            clock.tick()

        clock.resume()
        try:
            return original(*args, on_step=ticking, **kwargs)
        finally:
            clock.pause()

    engine.train_one_epoch = timed_epoch
    status = train.main(argv)
    clock.write(contender="ae-dist", exit_status=status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
