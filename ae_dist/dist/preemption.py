"""Stop requests (the scheduler's signals, Ctrl-C), turned into a checkpoint at the next step boundary.

SLURM sends SIGTERM before killing a job and, with ``--signal=[B:]SIG@SECONDS``, a warning
signal (SIGUSR1/SIGUSR2) before its time limit; a person presses Ctrl-C (SIGINT). The
handlers are installed first thing, before torch is imported, and only record the signal,
so a stop at any moment has one meaning:

- during start-up (imports, data, W&B, rendezvous): nothing to save; the process stops at
  once, with one line, exit 75 (130 for Ctrl-C), and the same command starts the run again
  (a lease it had taken is taken over by that command);
- during training: the ranks agree at step boundaries, in the loop's one collective every few
  steps (`ae_dist.sync`: within 10 steps or 5 s; a signal that reached rank 0 alone stops them
  all at the same step), write a checkpoint and return; exit 75 (130 for Ctrl-C);
- after the last epoch: ignored; the wrap-up (model.pt, pictures, W&B) finishes, exit 0.

A second Ctrl-C ends the process at once (exit 130), without a checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from ae_dist.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
STARTING, TRAINING, FINISHING = "starting", "training", "finishing"


class StopSignals:
    """Records stop signals from `install` until `restore` (a process that exits never restores).

    The Python handler does nothing itself (it runs only when the main thread runs Python
    code); a thread reads the signal numbers that the C-level handler writes to a wakeup pipe
    and acts on them, so a second Ctrl-C, or a stop during a start-up blocked in C (a
    rendezvous, a collective), is acted on at once.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received = 0
        self.phase = STARTING
        self._previous: dict[int, object] = {}
        self._wakeup: tuple[int, int] | None = None
        self._old_wakeup_fd = -1

    @classmethod
    def install(cls, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> StopSignals:
        stop = cls(signals)
        for sig in signals:
            stop._previous[sig] = signal.signal(sig, stop._handle)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        stop._wakeup = (read_fd, write_fd)
        stop._old_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=stop._watch, args=(read_fd,), name="ae-dist-stop-signals", daemon=True).start()
        return stop

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """Installed so that the C-level handler writes to the wakeup pipe; `_watch` records."""

    def _record(self, signum: int) -> None:
        if signum not in self.signals:
            return
        if signum == signal.SIGINT and self.received == signal.SIGINT and self.phase != FINISHING:
            os.write(2, b"interrupted again: stopping now, without a checkpoint\n")
            os._exit(EXIT_INTERRUPTED)
        if self.phase == STARTING:
            os.write(1, f"stopped by signal {signum} during start-up, before the first step: nothing to save; "
                        "run the same command to continue\n".encode())
            os._exit(exit_status(signum))
        first = not self.received
        self.received = self.received or signum
        if first and signum == signal.SIGINT and self.phase == TRAINING:
            os.write(2, b"interrupted: stopping at the next step boundary with a checkpoint (Ctrl-C again: stop now)\n")

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                self._record(signum)

    def exiting(self) -> None:
        """Ignore stop signals from here: the process is on its way out with its exit status.

        A launcher that sees one worker exit non-zero (torchrun, srun --kill-on-bad-exit)
        SIGTERMs the rest; a rank still in interpreter shutdown, where Python has put the
        default handlers back, would die of it and be reported as killed instead of its 75.
        """
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        """Hand the signals back to whoever had them (submitit's requeue handler, for one)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            os.close(self._wakeup[1])  # the watching thread reads end-of-file and returns
            self._wakeup = None


class AgreedStop:
    """The signal number some rank received (0: none), agreed by every rank without waiting on each other.

    For loops with a natural, rare boundary (an inference chunk); the training loop folds the flag into its
    one packed collective instead (`ae_dist.sync`). Each call sends this rank's flag in one small
    non-blocking all-reduce and returns the agreement of the call before, which has long arrived: the
    ranks never wait in lockstep at every boundary, and all of them see the same agreement at the same
    call, so they stop together, one boundary after the signal. ``info`` is the `ae_dist.dist.group.DistInfo`;
    `close` (every rank, at the loop's end) waits for the last flag.
    """

    def __init__(self, stop: StopSignals, info):
        self.stop, self.info = stop, info
        self.pending = None

    def __call__(self) -> int:
        if not self.info.distributed:
            return self.stop.received
        agreed = self._read()
        if not agreed:
            import torch
            import torch.distributed as dist

            device = self.info.device if self.info.backend == "nccl" else torch.device("cpu")
            flag = torch.tensor([self.stop.received], dtype=torch.int64, device=device)
            self.pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), flag)
        return agreed

    def _read(self) -> int:
        if self.pending is None:
            return 0
        work, flag = self.pending
        self.pending = None
        work.wait()
        agreed = int(flag.item())
        self.stop.received = self.stop.received or agreed  # one recorded after the flag was sent stays recorded
        return agreed

    def close(self) -> None:
        self._read()


def exit_status(signum: int) -> int:
    """What a run stopped by ``signum`` exits with: 130 for Ctrl-C, else 75 (run again to continue)."""
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


def stopped_line(signum: int, step: int) -> str:
    return f"stopped by signal {signum} at step {step}; checkpoint written, run the same command to continue"
