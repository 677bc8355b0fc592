"""Stop requests from the scheduler, turned into a checkpoint at the next step boundary.

SLURM sends SIGTERM before killing a job and, with ``--signal=[B:]SIG@SECONDS``, a warning
signal (SIGUSR1/SIGUSR2) before its time limit. The handler only records the signal; the
training loop asks `should_stop` at step boundaries, where every rank agrees (a signal
that reached rank 0 alone stops them all at the same step), writes a checkpoint and
returns. The command then exits with `EXIT_PREEMPTED` so a wrapper knows to requeue.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch

from ae_dist.dist import DistInfo, all_reduce_
from ae_dist.errors import EXIT_PREEMPTED  # noqa: F401  (the exit status of a stop; said here for readers)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
CHECK_EVERY_STEPS = 10  # ranks agree every N steps: one tiny all-reduce per N steps


class StopSignals:
    """Context manager: records stop signals while active, restores the old handlers after."""

    def __init__(self, info: DistInfo, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.info = info
        self.signals = signals
        self.received = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum

    def __enter__(self) -> StopSignals:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # A process stopping for a signal ignores repeats on its way out (torchrun sends SIGTERM to
            # every worker once one has exited); a handler that someone else installed comes back.
            stopping = self.received and handler in (signal.SIG_DFL, None)
            signal.signal(sig, signal.SIG_IGN if stopping else handler)

    def should_stop(self, step: int, force_check: bool = False) -> int:
        """The signal number some rank received (0: none); collective every CHECK_EVERY_STEPS."""
        if not self.info.distributed:
            return self.received
        if not force_check and step % CHECK_EVERY_STEPS:
            return 0
        flag = torch.tensor([self.received], dtype=torch.int64, device=self._flag_device())
        self.received = int(all_reduce_(flag, self.info, torch.distributed.ReduceOp.MAX).item())
        return self.received

    def _flag_device(self) -> torch.device:
        return self.info.device if self.info.backend == "nccl" else torch.device("cpu")
