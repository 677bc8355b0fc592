"""What the ranks agree on while they train, in one small collective every few steps and none between.

Each rank fills its own row of a (world size x 11) float64 tensor on its device: the stop signal it
received, whether it lost the run folder's lease (rank 0), the first step whose loss was not finite,
its loss sum and count since the last fold, and its step times (`ae_dist.monitor.ranks.RankClock`);
one all-reduce (sum) of that tensor, issued asynchronously at a step boundary, is read at the next
one (one device-to-host copy), so it overlaps a step. Every rank reads the same table, so every rank
takes the same decision at the same step: stop (the signal), stop (the lease), raise `Diverged`, and
the next interval.

The interval is the same on every rank, taken from the table: at most 9 steps and at most 4 s of
the slowest rank's steps; a result read one step later then agrees a stop within 10 steps or 5 s.
Steps longer than a second are synced and read at the same boundary. At checkpoints, a stop, and an
epoch's end, `fold` syncs at once and adds every rank's loss sum to the epoch's (what checkpoints
carry); each rank sums its own losses in step order, so the epoch's loss does not depend on when the
syncs fell. One process: the same, without the reduce (and the lease looked at every step).

Cost per sync, whatever the world size: one collective of 88 W bytes and one copy to the host;
rank 0 then analyses the step times in O(W log W) (`ae_dist.monitor.ranks`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ae_dist.dist.group import DistInfo
from ae_dist.dist.preemption import StopSignals
from ae_dist.errors import Diverged
from ae_dist.monitor.ranks import RankClock, RankTimes
from ae_dist.run.checkpoint import TrainState
from ae_dist.run.lease import check_held, lease_lost, lost_by_rank0

MAX_INTERVAL = 9  # steps between syncs; + 1 step of lag = a stop agreed within 10 steps ...
MAX_INTERVAL_S = 4.0  # ... and within about 5 s
READ_AT_ONCE_S = 1.0  # steps longer than this: the result is read at the boundary that issued it
SIGNAL, LEASE_LOST, FIRST_BAD, LOSS_SUM, LOSS_COUNT, SECONDS_PER_STEP, TIMES = range(7)  # TIMES: 5 columns from here
COLUMNS = TIMES + 5
NO_BAD = float(2 ** 53)  # "no bad step" in the FIRST_BAD column (exact in float64)


@dataclass(frozen=True)
class Agreed:
    """What every rank learned at this step boundary (nothing new between syncs)."""

    stop: int = 0  # the stop signal some rank received
    rank_times: RankTimes | None = None  # per-rank step times of a closed log window (rank 0 analyses them)


class StepSync:
    """The loop's one collective: `add` each applied step's loss, `step_done` at every step boundary, `fold`
    at checkpoints, a stop and epoch ends. In one process the same, without the reduce."""

    def __init__(self, info: DistInfo, stop: StopSignals, clock: RankClock, log_every: int):
        self.info, self.stop, self.clock, self.log_every = info, stop, clock, log_every
        self.device = info.device if info.backend == "nccl" or not info.distributed else torch.device("cpu")
        self.first_bad = torch.tensor(NO_BAD, dtype=torch.float64, device=info.device)  # this rank's, on the device
        self.total = torch.zeros((), dtype=torch.float64, device=info.device)  # since the last fold
        self.count = 0
        self.read_at_once, self.next_sync = False, 1
        self.issued_at, self.issued_step, self.steps_since_issue = time.monotonic(), 0, 0
        self.window_closed = False  # a log step passed since the last issue: that sync carries the step times
        self.pending: tuple[dist.Work | None, torch.Tensor, bool, int] | None = None
        self.agreed_stop = 0
        self.carried: RankTimes | None = None  # a window's times read by a fold, handed out at the next boundary
        self.folded = (0.0, 0)  # every rank's loss sum and count, as the newest table holds them
        self.collectives = 0  # all-reduces issued (benchmarks and tests count them)

    def add(self, loss: torch.Tensor, step: int) -> None:
        """An applied step's loss, left on the device."""
        loss = loss.detach()
        self.first_bad = torch.where(torch.isfinite(loss), self.first_bad, self.first_bad.clamp(max=float(step)))
        self.total += loss.double()  # in step order on every rank: the epoch's sum does not depend on the syncs
        self.count += 1

    def step_done(self, step: int) -> Agreed:
        """At every step boundary, every rank: what the ranks agree on now (a stop, a closed log window)."""
        self.steps_since_issue += 1
        self.window_closed |= step % self.log_every == 0
        if not self.info.distributed:
            check_held()  # one process: at every step boundary (a flag and a clock)
            self.agreed_stop = self.agreed_stop or self.stop.received  # nobody to agree with: at this boundary
        agreed, self.carried = Agreed(self.agreed_stop, self.carried), None
        if self.pending is not None and not self.read_at_once:
            agreed = self._newer(agreed, self._read())
        if step >= self.next_sync and not agreed.stop:
            self._issue(step)
            if self.read_at_once:
                agreed = self._newer(agreed, self._read())
        return agreed

    @staticmethod
    def _newer(before: Agreed, now: Agreed) -> Agreed:
        return Agreed(now.stop, now.rank_times or before.rank_times)

    def loggable(self) -> bool:
        """Whether this rank's losses so far are all finite (one host sync: for logging steps). A rank that saw
        a NaN logs nothing more while the ranks agree to stop at the next sync."""
        return float(self.first_bad) == NO_BAD

    def fold(self, state: TrainState, step: int) -> int:
        """Every rank at the same step (a checkpoint, a stop, an epoch's end): sync now and add every rank's
        loss sum to the epoch's in ``state``; the stop signal agreed so far (0: none)."""
        if self.pending is not None:
            self.carried = self._read().rank_times or self.carried
        self._issue(step)
        agreed = self._read()
        self.carried = agreed.rank_times or self.carried  # logged at the next step boundary
        state.epoch_loss_sum += self.folded[0]
        state.epoch_loss_count += self.folded[1]
        self.total.zero_()
        self.count = 0
        return agreed.stop

    def _issue(self, step: int) -> None:
        """This rank's row into the table, all-reduced asynchronously: read at the next boundary (or now)."""
        info, now = self.info, time.monotonic()
        closed = self.window_closed
        sums = self.clock.take() if closed else [0.0] * 5
        row = torch.tensor([self.stop.received, float(lease_lost()), 0.0, 0.0, self.count,
                            (now - self.issued_at) / max(1, self.steps_since_issue), *sums], dtype=torch.float64)
        table = torch.zeros((info.world_size, COLUMNS), dtype=torch.float64, device=self.device)
        table[info.rank] = row.to(self.device)
        table[info.rank, FIRST_BAD] = self.first_bad.to(self.device)
        table[info.rank, LOSS_SUM] = self.total.to(self.device)
        self.issued_at, self.issued_step, self.steps_since_issue = now, step, 0
        self.window_closed = False
        work = None
        if info.distributed:
            work = dist.all_reduce(table, async_op=True)
            self.collectives += 1
        self.pending = (work, table, closed, step)

    def _read(self) -> Agreed:
        """The pending table, waited for and copied to the host once: the decisions every rank takes alike."""
        work, table, closed, step = self.pending
        self.pending = None
        if work is not None:
            work.wait()
        host = table.cpu()
        if float(host[:, LEASE_LOST].max()) > 0:
            check_held()  # rank 0: its own line
            raise lost_by_rank0()  # the other ranks: the same stop, each with its line
        first_bad = float(host[:, FIRST_BAD].min())
        if first_bad != NO_BAD:
            raise Diverged(int(first_bad))
        self.agreed_stop = max(self.agreed_stop, int(host[:, SIGNAL].max()))
        # a signal recorded after this table was issued stays recorded: the next table carries it
        self.stop.received = self.stop.received or self.agreed_stop
        self.folded = (float(host[:, LOSS_SUM].sum()), int(host[:, LOSS_COUNT].sum()))
        seconds = float(host[:, SECONDS_PER_STEP].max())  # the slowest rank's, the same number on every rank
        self.read_at_once = seconds > READ_AT_ONCE_S
        interval = MAX_INTERVAL if seconds <= 0 else max(1, min(MAX_INTERVAL, math.floor(MAX_INTERVAL_S / seconds)))
        self.next_sync = step + interval
        times = None
        if closed and self.info.is_main and self.info.distributed:
            times = self.clock.times(step, host[:, TIMES:].tolist())
        return Agreed(self.agreed_stop, times)
