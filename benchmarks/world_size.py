"""What grows with the world size W, simulated for W = 8 .. 1024 on one machine, through the trainer's own functions.

    python -m benchmarks.world_size                       # W = 8 16 ... 1024
    python -m benchmarks.world_size --sizes 8,64,512 --beats 3

Per W, one row:

    analysis ms     rank 0's straggler analysis of one log window (`ae_dist.monitor.ranks`: RankTimes.record and
                    Stragglers.update on synthetic per-rank step times, one rank 3x slower), while the others wait
    host copies     device-to-host copies per logging step on every rank (W rows of the gathered times, or one
                    table), and the ms they take here on CPU tensors
    diagnosis reqs  store requests that one failure costs, every rank together: each rank that looks at the beats
                    (every rank, or the one that claimed the incident) times its requests, counted on a real
                    TCPStore holding W ranks' beats
    diagnosis ms    one rank's look, its three heartbeat intervals of watching excluded
    beat reqs/rank  store requests per heartbeat and rank
    beat round ms   W client threads, each with its own connection to one real TCPStore, beating once each:
                    the wall time of one round (the store's load per heartbeat interval)

The code is whatever ``ae_dist`` this runs against: run it on two checkouts to compare (the liveness API is
detected: ``heartbeat/<r>`` counters or ``beat/<r>`` records). Figures are this machine's (a shared 2-core VM
times W threads badly: compare rows, and the two checkouts, side by side in one run each).
"""

from __future__ import annotations

import argparse
import datetime
import random
import resource
import statistics
import threading
import time

import torch
import torch.distributed as dist

from ae_dist.dist import liveness
from ae_dist.monitor import ranks


class Counting:
    """A store that counts the requests made through it (each method call is one request to the server)."""

    def __init__(self, store: dist.Store):
        self.store, self.requests = store, 0

    def __getattr__(self, name: str):
        call = getattr(self.store, name)

        def counted(*args, **kwargs):
            self.requests += 1
            return call(*args, **kwargs)

        return counted


def synthetic_times(world_size: int, step: int, slow: int = 3) -> ranks.RankTimes:
    rng = random.Random(world_size)
    wall = [0.1 + rng.random() * 0.01 for _ in range(world_size)]
    compute = [w * 0.6 for w in wall]
    compute[slow % world_size] *= 3
    sync = [w - c for w, c in zip(wall, compute)]
    data = [0.001] * world_size
    return ranks.RankTimes(step, [100] * world_size, wall, data, compute, [max(0.0, s) for s in sync],
                           [f"node{r // 8:04d}" for r in range(world_size)])


def analysis_ms(world_size: int, windows: int = 5) -> float:
    """Rank 0's work per log window: the W&B keys and the straggler check (a fresh Stragglers, 3 windows in a row)."""
    stragglers = ranks.Stragglers()
    started = time.perf_counter()
    for window in range(windows):
        times = synthetic_times(world_size, window * 100)
        times.record()
        stragglers.update(times)
    return (time.perf_counter() - started) / windows * 1e3


def host_copies(world_size: int, new_api: bool) -> tuple[int, float]:
    """Device-to-host copies per logging step and their time (CPU tensors: the copy calls' own cost)."""
    if new_api:
        table = torch.zeros((world_size, 11), dtype=torch.float64)
        started = time.perf_counter()
        table.cpu()[:, 6:].tolist()
        return 1, (time.perf_counter() - started) * 1e3
    every = [torch.zeros(5, dtype=torch.float64) for _ in range(world_size)]
    started = time.perf_counter()
    [row.tolist() for row in every]
    return world_size, (time.perf_counter() - started) * 1e3


def fake_heartbeat(store: dist.TCPStore, port: int, world_size: int, rank: int = 1) -> tuple[object, list[Counting]]:
    """A `liveness.Heartbeat` of rank ``rank`` without its threads, whose store clients count their requests."""
    beat = object.__new__(liveness.Heartbeat)
    beat.addr, beat.port, beat.host, beat.prefix = "127.0.0.1", port, "rank 0", "bench/"
    beat.rank, beat.world_size, beat.timeout_s, beat.interval = rank, world_size, 30.0, 0.001
    beat.incidents_dir, beat.hostname, beat.stacks_written = None, "node0000", ""
    clients: list[Counting] = []

    def client() -> Counting:
        counting = Counting(dist.PrefixStore("bench/", store))
        clients.append(counting)
        return counting

    beat._client = client
    return beat, clients


def diagnosis(store: dist.TCPStore, port: int, world_size: int) -> tuple[int, float, int]:
    """(requests of all ranks that look, one rank's ms, ranks that look) for one failure."""
    prefixed = dist.PrefixStore("bench/", store)
    new_api = hasattr(liveness.Heartbeat, "_read_beats")
    for r in range(world_size):
        if new_api:
            prefixed.set(f"beat/{r}", f"{r + 1} {2 * r} node{r // 8:04d}")
        else:
            prefixed.set(f"host/{r}", f"node{r // 8:04d}")
            prefixed.add(f"heartbeat/{r}", r + 1)
    beat, clients = fake_heartbeat(store, port, world_size)
    started = time.perf_counter()
    beat.silent_ranks(timed_out=True)
    took = (time.perf_counter() - started) * 1e3
    lookers = 1 if new_api else world_size  # the claimant alone, or every rank whose collective failed
    return sum(c.requests for c in clients) * lookers, took, lookers


class Beats:
    """Stands for the heartbeat thread's stop event: lets its loop run ``beats`` times, without waiting."""

    def __init__(self, beats: int):
        self.left = beats

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0

    def wait(self, seconds: float) -> bool:
        return False


def beat_requests(store: dist.TCPStore, port: int, world_size: int) -> int:
    """Requests one rank makes per heartbeat: its beat thread's loop run twice and once, the difference."""
    counts = []
    for beats in (2, 1):
        beat, clients = fake_heartbeat(store, port, world_size, rank=0)
        beat.steps, beat.in_step, beat.incidents_dir, beat._stopped = 0, False, "unused", Beats(beats)
        beat._beat()
        counts.append(sum(c.requests for c in clients))
    return counts[0] - counts[1]


def beat_round_ms(port: int, world_size: int, rounds: int) -> float:
    """W threads, one client connection each, each beating as the trainer's thread does; median round time."""
    clients = [dist.PrefixStore("bench/", dist.TCPStore("127.0.0.1", port, is_master=False,
                                                        timeout=datetime.timedelta(seconds=60)))
               for _ in range(world_size)]
    new_api = hasattr(liveness.Heartbeat, "_read_beats")
    times = []
    for _ in range(rounds):
        barrier = threading.Barrier(world_size + 1)

        def one(rank: int, client: dist.Store, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            if new_api:
                client.set(f"beat/{rank}", f"1 2 node{rank // 8:04d}")
            else:
                client.add(f"heartbeat/{rank}", 1)
            client.check(["incident"])

        threads = [threading.Thread(target=one, args=(r, c)) for r, c in enumerate(clients)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,16,32,64,128,256,512,1024", help="world sizes, comma-separated")
    parser.add_argument("--beats", type=int, default=3, help="heartbeat rounds timed per world size")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one connection per simulated rank
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=datetime.timedelta(seconds=60), multi_tenant=True)
    port = store.port
    new_api = hasattr(liveness.Heartbeat, "_read_beats")
    kind = "beat/<r> records, the claimant alone diagnoses" if new_api else "heartbeat/<r> counters, every rank diagnoses"
    print(f"liveness: {kind}")
    print(f"{'W':>5} {'analysis ms':>12} {'host copies':>12} {'copies ms':>10} {'diagnosis reqs':>15} {'diagnosis ms':>13} "
          f"{'beat reqs/rank':>15} {'beat round ms':>14}")
    for world_size in [int(size) for size in args.sizes.split(",")]:
        analysis = analysis_ms(world_size)
        copies, copies_ms = host_copies(world_size, new_api)
        requests, took, _ = diagnosis(store, port, world_size)
        per_beat = beat_requests(store, port, world_size)
        round_ms = beat_round_ms(port, world_size, args.beats)
        print(f"{world_size:>5} {analysis:>12.2f} {copies:>12} {copies_ms:>10.2f} {requests:>15,} {took:>13.1f} "
              f"{per_beat:>15} {round_ms:>14.1f}", flush=True)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    main()
