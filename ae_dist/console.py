"""What a person watching the run sees: a progress bar on a terminal, plain lines in a log."""

from __future__ import annotations

import math
import sys
import time
from typing import Any


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    return (f"epoch {record['epoch']}/{epochs}, loss: {record['train_loss']:.4f}, "
            f"test loss: {record['test_loss']:.4f}, {record['samples_per_s']:,.0f} samples/s")


class Progress:
    """A tqdm bar on a terminal; a plain line every `every` steps otherwise (SLURM logs)."""

    def __init__(self, mode: str, total: int, enabled: bool, every: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "off"
        self.every, self.total = every, total
        self.bar = None
        self.started = time.perf_counter()
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def start_at(self, step: int) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def update(self, step: int, epoch: int, loss: float | None) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", refresh=False)
        elif self.mode == "lines" and loss is not None and math.isfinite(loss):
            print(f"step {step}/{self.total} epoch {epoch} loss {loss:.4f} "
                  f"({time.perf_counter() - self.started:.0f}s)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
