"""Per-rank step times and stragglers: five floats per rank in the loop's one packed collective (`ae_dist.sync`).

Each rank times its own training steps with the host clock and splits each step in three:

    data     from the end of its previous step to the model's forward (the batch gather, and
             anything else a rank does before the forward)
    compute  forward and backward, until the gradient of the model's first parameter is ready
             (backward computes the first layer last)
    sync     from there to the end of the step: the wait for the gradient all-reduce, the
             optimizer, logging and checkpoints

Under DDP every rank's wall time per step is the same: the slowest rank sets the pace and
the others wait in the gradient all-reduce. A rank's wait is its sync time above the smallest
sync time of any rank, so its **step time** is the wall time per step less that wait: what the
step would take if this rank did not wait for the others. Rank 0 logs the window's
``ranks/step_time_max``, ``ranks/step_time_median``, the slowest rank and its host (W&B only;
metrics.jsonl keeps train and epoch records), and names a rank whose step time stays above
``STRAGGLER_RATIO`` x the median of the other ranks for ``STRAGGLER_LOGS`` logs in a row in
one ``straggler:`` line and a W&B alert. The first step of each epoch (after the evaluation)
is not timed.

Cost: three ``perf_counter`` calls per step (a forward pre-hook, one gradient hook, the end of
the step); the sums ride in the first sync after each logging step (`ae_dist.sync`), and rank 0's
analysis sorts the step times once per window: O(W log W) (``python -m benchmarks.world_size``
times it against W; ``python -m benchmarks.wandb_overhead`` times each piece of the loop). One
process: nothing is timed. On CUDA the split is host time (kernel launches, not kernel time).
"""

from __future__ import annotations

import functools
import socket
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ae_dist.dist.group import DistInfo

STRAGGLER_RATIO = 1.5  # step time above this many times the median of the other ranks ...
STRAGGLER_LOGS = 3  # ... in this many logs in a row: a straggler


@dataclass(frozen=True, eq=False)
class RankTimes:
    """One log window, every rank: seconds per step, in rank order."""

    step: int  # the logging step that closed the window
    steps: list[int]  # timed steps per rank
    wall: list[float]
    data: list[float]
    compute: list[float]
    sync: list[float]
    hosts: list[str]

    @functools.cached_property
    def waits(self) -> list[float]:
        fastest = min(self.sync)
        return [s - fastest for s in self.sync]

    @functools.cached_property
    def step_times(self) -> list[float]:
        return [wall - wait for wall, wait in zip(self.wall, self.waits)]

    @functools.cached_property
    def others_median(self) -> list[float]:
        """For each rank, the median of the other ranks' step times: one sort, O(W log W) for all of them."""
        times = self.step_times
        order = sorted(range(len(times)), key=times.__getitem__)
        position = [0] * len(times)
        for at, rank in enumerate(order):
            position[rank] = at
        n = len(times) - 1  # the others

        def kth(k: int, without: int) -> float:  # the k-th smallest of the others
            return times[order[k + 1 if k >= without else k]]

        if n == 0:
            return [0.0] * len(times)
        return [kth(n // 2, position[r]) if n % 2 else (kth(n // 2 - 1, position[r]) + kth(n // 2, position[r])) / 2
                for r in range(len(times))]

    def ratio(self, rank: int) -> float:
        """This rank's step time over the median of the other ranks' step times."""
        others = self.others_median[rank]
        return self.step_times[rank] / others if others > 0 else float("inf")

    def record(self) -> dict[str, float | int | str]:
        """The W&B history keys of this window."""
        times = self.step_times
        slowest = max(range(len(times)), key=times.__getitem__)
        return {"ranks/step_time_max": times[slowest], "ranks/step_time_median": statistics.median(times),
                "ranks/slowest_rank": slowest, "ranks/slowest_host": self.hosts[slowest],
                "ranks/slowest_ratio": self.ratio(slowest), "ranks/step_wall": statistics.median(self.wall),
                "ranks/data_time_max": max(self.data), "ranks/compute_time_max": max(self.compute),
                "ranks/comm_wait_max": max(self.waits)}


class RankClock:
    """This rank's step timing (every rank makes one; a no-op in a one-process run)."""

    def __init__(self, model: nn.Module, info: DistInfo):
        self.info = info
        self.enabled = info.distributed
        self.hosts = [socket.gethostname()]
        self.sums = [0, 0.0, 0.0, 0.0, 0.0]  # steps, wall, data, compute, sync
        self.step_end = self.forward_at = self.ready_at = 0.0
        if not self.enabled:
            return
        hosts: list[str | None] = [None] * info.world_size
        dist.all_gather_object(hosts, self.hosts[0])
        self.hosts = [str(host) for host in hosts]
        model.register_forward_pre_hook(self._forward)  # the model the loop calls: outside any compiled region
        first = next((param for param in model.parameters() if param.requires_grad), None)
        if first is not None:
            first.register_post_accumulate_grad_hook(self._grad_ready)

    def _forward(self, module: nn.Module, args: object) -> None:
        self.forward_at = time.perf_counter()
        if self.info.heartbeat is not None:
            self.info.heartbeat.step_started()

    def _grad_ready(self, param: torch.Tensor) -> None:
        self.ready_at = time.perf_counter()

    def step_done(self, batch_in_epoch: int) -> None:
        """After each step, on every rank. The epoch's first step (``batch_in_epoch`` 1) is not timed."""
        if not self.enabled:
            return
        if self.info.heartbeat is not None:  # the watchdog's view of this rank's progress (ae_dist.dist.liveness)
            self.info.heartbeat.step_done()
        now = time.perf_counter()
        if batch_in_epoch > 1 and 0 < self.step_end < self.forward_at <= self.ready_at <= now:
            sums = self.sums
            sums[0] += 1
            sums[1] += now - self.step_end
            sums[2] += self.forward_at - self.step_end
            sums[3] += self.ready_at - self.forward_at
            sums[4] += now - self.ready_at
        self.step_end = now

    def pause(self) -> None:
        """Out of the steps (an epoch's end, the wrap-up: long local work on rank 0, pictures, W&B): the
        watchdog stops watching this rank's steps until the next one is done."""
        if self.info.heartbeat is not None:
            self.info.heartbeat.disarm()

    def take(self) -> list[float]:
        """This rank's sums since the last take (steps, wall, data, compute, sync), for `ae_dist.sync`'s table."""
        sums, self.sums = self.sums, [0, 0.0, 0.0, 0.0, 0.0]
        return [float(value) for value in sums]

    def times(self, step: int, rows: list[list[float]]) -> RankTimes | None:
        """Every rank's sums of one log window (rows in rank order) as times per step; None when a rank timed none."""
        if not self.enabled or any(row[0] == 0 for row in rows):
            return None
        per_step = [[value / row[0] for value in row[1:]] for row in rows]
        wall, data, compute, sync = (list(column) for column in zip(*per_step))
        return RankTimes(step, [int(row[0]) for row in rows], wall, data, compute, sync, self.hosts)


@dataclass
class Stragglers:
    """Rank 0: which ranks stayed slow, and the one line that names each of them once."""

    slow_logs: dict[int, int] = field(default_factory=dict)
    since: dict[int, int] = field(default_factory=dict)
    named: set[int] = field(default_factory=set)

    def update(self, times: RankTimes) -> list[str]:
        lines = []
        for rank in range(len(times.wall)):
            if times.ratio(rank) <= STRAGGLER_RATIO:
                self.slow_logs[rank] = 0
                continue
            if not self.slow_logs.get(rank):
                self.since[rank] = times.step
            self.slow_logs[rank] = self.slow_logs.get(rank, 0) + 1
            if self.slow_logs[rank] >= STRAGGLER_LOGS and rank not in self.named:
                self.named.add(rank)
                lines.append(straggler_line(times, rank, self.slow_logs[rank], self.since[rank]))
        return lines


def straggler_line(times: RankTimes, rank: int, logs: int, since: int) -> str:
    others = times.others_median[rank]
    return (f"straggler: rank {rank} on {times.hosts[rank]} takes {times.step_times[rank] * 1e3:.1f} ms per step, "
            f"{times.ratio(rank):.1f}x the {others * 1e3:.1f} ms median of the other ranks, for {logs} logs in a row "
            f"(since step {since}; its data {times.data[rank] * 1e3:.1f} ms, compute {times.compute[rank] * 1e3:.1f} ms)")
