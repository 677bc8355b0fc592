"""ae-dist's own command with a step clock: ``python -m benchmarks.ae_dist_probe`` + the trainer's arguments.

    python -m benchmarks.ae_dist_probe data.name=fashion_mnist data.root=DIR data.download=false ...
    torchrun --standalone --nproc_per_node=2 -m benchmarks.ae_dist_probe ...

It runs ``ae_dist.train.main`` unchanged; the only additions are a wrapper around
``engine.train_step`` that ticks the clock after each step, and one around ``trainer.end_epoch``
that pauses the clock between epochs (evaluation, pictures, the epoch-end checkpoint) until the
next step, so the steady state is training steps only; checkpoints due inside an epoch stay in it.
"""

from __future__ import annotations

import sys

from ae_dist import engine, train, trainer
from benchmarks.clock import StepClock, cuda_sync


def main(argv: list[str]) -> int:
    config, _ = train.parse_args(argv)
    clock = StepClock(global_batch=config.train.batch_size,
                      sync=cuda_sync("cuda" if config.train.device != "cpu" else "cpu"))
    step, end_epoch = engine.train_step, trainer.end_epoch
    paused = [False]

    def timed_step(*args, **kwargs):
        if paused[0]:
            clock.resume()
            paused[0] = False
        result = step(*args, **kwargs)
        clock.tick()
        return result

    def timed_end_epoch(*args, **kwargs):
        clock.pause()
        paused[0] = True
        return end_epoch(*args, **kwargs)

    engine.train_step, trainer.end_epoch = timed_step, timed_end_epoch
    status = train.main(argv)
    clock.write(contender="ae-dist", exit_status=status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
