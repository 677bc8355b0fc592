"""What a person watching the run sees: a progress bar on a terminal, plain lines in a log.

With a bar, every other line (the epoch lines, messages) goes through `write`, which prints
it above the bar (`tqdm.write`) instead of gluing it onto the bar's line. Without one (SLURM
logs, run.progress=lines) a plain line every train.log_every steps says the step, the loss,
the rate in steps/s and the time left.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

_BARS: list[Progress] = []  # the bar being shown, if any: `write` prints above it


def epoch_line(record: dict[str, Any], epochs: int, baseline: str = "") -> str:
    """``epoch 3/30, loss: 0.0301, test loss: 0.0290 (1.16x PCA-3), 2,950 samples/s``: with a ``baseline`` name and
    the record's ``test_loss_ratio``, the test loss as a multiple of that baseline's."""
    ratio = f" ({record['test_loss_ratio']:.2f}x {baseline})" if baseline and "test_loss_ratio" in record else ""
    return (f"epoch {record['epoch']}/{epochs}, loss: {record['train_loss']:.4f}, "
            f"test loss: {record['test_loss']:.4f}{ratio}, {record['samples_per_s']:,.0f} samples/s")


def write(line: str) -> None:
    """Print one line to stdout; above the progress bar while one is shown."""
    if _BARS:
        _BARS[-1].write(line)
    else:
        print(line, flush=True)


def duration(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A tqdm bar on a terminal; a plain line every `every` steps otherwise (SLURM logs)."""

    def __init__(self, mode: str, total: int, enabled: bool, every: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "off"
        self.every, self.total = every, total
        self.bar = None
        self.started, self.first_step = time.perf_counter(), 0
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
            _BARS.append(self)

    def start_at(self, step: int) -> None:
        self.started, self.first_step = time.perf_counter(), step
        if self.bar is not None:
            self.bar.n = self.bar.last_print_n = step
            self.bar.refresh()

    def update(self, step: int, epoch: int, loss: float | None) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", refresh=False)
        elif self.mode == "lines" and loss is not None and math.isfinite(loss):
            print(self.line(step, epoch, loss), flush=True)

    def line(self, step: int, epoch: int, loss: float) -> str:
        """``step 40/90 epoch 2 loss 0.0612 (0:12, 3.3 steps/s, ETA 0:15)``: rate and time left since this start."""
        elapsed = time.perf_counter() - self.started
        rate = (step - self.first_step) / elapsed if elapsed > 0 else 0.0
        eta = duration((self.total - step) / rate) if rate > 0 else "?"
        return f"step {step}/{self.total} epoch {epoch} loss {loss:.4f} ({duration(elapsed)}, {rate:.1f} steps/s, ETA {eta})"

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            _BARS.remove(self)
            self.bar = None
