"""What the run's PCA baseline (`ae_dist.baseline`) costs rank 0 at start-up, on synthetic 28x28 images.

    python -m benchmarks.baseline_cost                      # 60,000 and 1,000,000 training images, 3 runs each
    python -m benchmarks.baseline_cost --sizes 60000 --runs 5 --threads 1 2

For each training-split size and thread count: the wall time of `ae_dist.baseline.compute` (seeded sample
of at most `SAMPLE_BYTES` of float32 pixels, randomized PCA at 3 components, the whole 10,000-image test
split scored as the model's test loss is), median with [min .. max], interleaved over the runs so a busy
machine slows every column alike; the images sampled; the test loss; and the peak growth of the
process's RssAnon (/proc/self/status, polled every 2 ms) during the call: the sample, its float copy and
the test batches. One thread is what a rank gets when two share a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

from ae_dist import baseline
from ae_dist.data import Split, synthetic_split


def rss_anon_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


class PeakRssAnon:
    """The largest RssAnon seen while the ``with`` block runs, less the value before it (MiB)."""

    def __enter__(self) -> PeakRssAnon:
        self.before = self.peak = rss_anon_mib()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def poll(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, rss_anon_mib())

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss_anon_mib())

    @property
    def grown(self) -> float:
        return self.peak - self.before


def synthetic(count: int, seed: int, chunk: int = 100_000) -> Split:
    """``count`` synthetic images, made ``chunk`` at a time (one call for 1M would hold 3 GB of float32)."""
    parts = [synthetic_split(min(chunk, count - start), seed * 1000 + start // chunk) for start in range(0, count, chunk)]
    return Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_000, 1_000_000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    test = synthetic(10_000, seed=1)
    trains = {size: synthetic(size, seed=0) for size in args.sizes}
    baseline.compute(test, test, 3, 0, 1000)  # first use of torch.linalg loads its libraries: not the baseline's cost
    times: dict[tuple[int, int], list[float]] = {}
    found: dict[int, baseline.Baseline] = {}
    grown: dict[int, float] = {}
    for _ in range(args.runs):
        for size, train in trains.items():
            for threads in args.threads:
                torch.set_num_threads(threads)
                with PeakRssAnon() as memory:
                    started = time.perf_counter()
                    found[size] = baseline.compute(train, test, 3, 0, 1000)
                    times.setdefault((size, threads), []).append(time.perf_counter() - started)
                grown[size] = max(grown.get(size, 0.0), memory.grown)
    load = os.getloadavg()[0]
    print(f"ae_dist.baseline.compute, PCA-3, seconds: median [min .. max] of {args.runs} runs, "
          f"{os.cpu_count()} CPU(s), load {load:.1f}; test split 10,000 images; sample at most "
          f"{baseline.SAMPLE_BYTES >> 20} MiB of float32 pixels; {baseline.METHOD}")
    print(f"{'train images':>13} {'sampled':>9} {'threads':>7} {'seconds':>24} {'test MSE':>9} {'peak RssAnon +MiB':>17}")
    for (size, threads), runs in times.items():
        print(f"{size:>13,} {found[size].sample_images:>9,} {threads:>7} "
              f"{statistics.median(runs):>8.2f} [{min(runs):.2f} .. {max(runs):.2f}]".ljust(58)
              + f" {found[size].test_loss:>9.5f} {grown[size]:>17.0f}")


if __name__ == "__main__":
    main()
