"""Checkpoints: written once by global rank 0, atomically; the newest complete one wins.

A checkpoint is ``checkpoints/step_XXXXXXXX.pt`` holding everything needed to continue
exactly: the unwrapped model, the optimizer, epoch, step, the batch index inside the
epoch, RNG states, the resolved config and the W&B run id. It is written to a temporary
name, fsynced, then renamed, so a reader sees either the whole file or none of it.
Loading uses ``torch.load(weights_only=True)``: a file that carries code is refused. The
zip's CRC-32s are checked first (torch.load does not), so bad bytes are found as well as
a truncated file; either is reported in one line and the next older checkpoint is used.
"""

from __future__ import annotations

import os
import random
import re
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ae_dist.errors import CheckpointFailed, UsageError, os_fix
from ae_dist.run.lease import check_held

NAME = re.compile(r"^step_(\d{8,})\.pt$")
REQUIRED = {"model", "optimizer", "epoch", "batch", "step", "config", "rng"}
TEMPORARY = ".step_*.pt.tmp-*"  # a writer's file before its rename; left behind only by a killed writer
# Config sections that must match for a checkpoint to continue this run, less what may move.
MUST_MATCH = ("model", "data")
MAY_DIFFER = {"data.root", "data.download",  # where the data lies; which data it is, is data.digest: a consent change
              "data.path", "data.labels", "data.test_path", "data.test_labels", "data.cache_dir", "data.on_bad_image",
              "data.digest", "data.fit", "data.max_pixels", "data.classes", "data.test_fraction",
              "model.noise_std", "model.beta"}  # the last two: the consent check


@dataclass
class TrainState:
    epoch: int = 0  # epoch in progress (== train.epochs when the run is complete)
    batch: int = 0  # batches of this epoch already taken
    step: int = 0  # optimizer steps taken since the start of the run
    wandb_run_id: str = ""
    skipped_steps: int = 0  # steps dropped by train.nan_policy=skip
    epoch_loss_sum: float = 0.0  # this epoch's losses so far, summed over every rank's steps
    epoch_loss_count: int = 0  # how many (rank, step) losses that sum holds
    resumed_from: Path | None = None  # the checkpoint this start continued from (not saved)
    selection: list = field(default_factory=list)  # best validation loss, its step, passes since, stopped early
    ema: dict[str, torch.Tensor] | None = None  # the EMA weights' state_dict (train.ema_decay > 0)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device only: a resume may see fewer devices
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, list | tuple):  # older checkpoints: every device the writer saw, in its order
            if not cuda:
                return
            device = torch.cuda.current_device()
            cuda = cuda[device] if device < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda)  # into this rank's device, however many this node has


class Checkpointer:
    """The run's checkpoints: when one is due, and writing each step once (global rank 0 writes).

    ``due(step)`` holds every ``every_steps`` steps; ``save`` is called there, at a stop and at
    each epoch's end, and writes nothing when this step is already on disk.
    """

    def __init__(self, folder: Path, every_steps: int, keep: int, config: dict[str, Any], writes: bool):
        self.folder, self.every_steps, self.keep, self.config, self.writes = folder, every_steps, keep, config, writes
        self.saved_step = -1

    def due(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        if state.step == self.saved_step:
            return
        if self.writes:
            try:
                save(self.folder, model, optimizer, state, self.config, self.keep)
            except CheckpointWriteError as err:
                raise CheckpointFailed(err.strerror, "run.dir", os_fix(err, intact="the previous checkpoint is intact")
                                       ) from None
        self.saved_step = state.step


def save(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
         config: dict[str, Any], keep: int) -> Path:
    """Write ``step_<step>.pt`` atomically, then prune all but the newest ``keep``."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": state.epoch,
        "batch": state.batch,
        "step": state.step,
        "skipped_steps": state.skipped_steps,
        "epoch_loss": [state.epoch_loss_sum, state.epoch_loss_count],
        "rng": rng_state(),
        "config": config,
        "wandb_run_id": state.wandb_run_id,
    }
    if state.selection:
        payload["selection"] = state.selection
    if state.ema is not None:
        payload["ema"] = state.ema
    path = folder / f"step_{state.step:08d}.pt"
    try:
        write_atomic(path, payload)
    except OSError as err:
        raise CheckpointWriteError(path, err) from err
    for old in [*list_checkpoints(folder)[:-keep], *folder.glob(TEMPORARY)]:
        old.unlink(missing_ok=True)
    return path


def write_atomic(path: Path, obj: Any) -> None:
    """torch.save ``obj`` to a temporary name beside ``path``, fsync, rename; on OSError the temporary is removed."""
    check_held(path.name)  # a holder taken over writes nothing more (ae_dist.run.lease)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            sink = _Sink(fh)
            try:
                torch.save(obj, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None
            fh.flush()
            os.fsync(fh.fileno())
        check_held(path.name)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Sink:
    """The file torch.save writes to. It keeps the OSError of a failed write (a full disk), which
    torch.save itself reports only as a RuntimeError about the zip writer's position."""

    def __init__(self, fh: Any):
        self.fh, self.name, self.error = fh, fh.name, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


class CheckpointWriteError(OSError):
    def __init__(self, path: Path, err: OSError):
        super().__init__(err.errno, f"could not write checkpoint {path}: {err.strerror or err}")
        self.path = path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files never match the name)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if NAME.match(p.name) and p.is_file() and not p.is_symlink()),
                  key=lambda p: int(NAME.match(p.name)[1]))


def read(path: Path) -> dict[str, Any]:
    """Load one checkpoint with weights_only=True; raise ValueError when it is damaged."""
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad bytes, or a pickle that asks for code
        raise ValueError(f"{err.__class__.__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}") from None
    missing = REQUIRED - set(payload) if isinstance(payload, dict) else {"all"}
    if not missing and not (isinstance(payload["rng"], dict) and {"python", "numpy", "torch"} <= set(payload["rng"])):
        missing = {"rng"}
    if missing:
        raise ValueError(f"not an ae-dist checkpoint (missing {sorted(missing)})")
    return payload


def check_tensors(payload: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """ValueError unless the checkpoint's model tensors are exactly those of a model with ``shapes``."""
    model = payload["model"]
    if not isinstance(model, dict) or set(model) != set(shapes):
        raise ValueError("its model tensors are not this model's")
    for key, shape in shapes.items():
        if not isinstance(model[key], torch.Tensor) or tuple(model[key].shape) != tuple(shape):
            raise ValueError(f"tensor {key} has shape {tuple(getattr(model[key], 'shape', ()))}, the model's is {shape}")


def _check_archive(path: Path) -> None:
    """torch.load does not check the zip's CRC-32s, so bad bytes inside a tensor load silently."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated (no central directory), not a zip, unreadable
        raise ValueError(f"not a complete checkpoint ({err.__class__.__name__}: {str(err)[:80]})") from None
    if bad is not None:
        raise ValueError(f"bad bytes in {bad} (CRC-32 mismatch)")


def load_latest(folder: Path, warn=lambda line: print(line, file=sys.stderr, flush=True),
                fits: Callable[[Path, dict], None] | None = None) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads (and ``fits``); damaged ones are reported in one line and skipped."""
    for path in reversed(list_checkpoints(folder)):
        try:
            payload = read(path)
            if fits is not None:
                fits(path, payload)
            return path, payload
        except ValueError as err:
            warn(f"warning: skipping damaged checkpoint {path} ({err}); trying the next older one")
    return None


def load_path(path: Path, fits: Callable[[Path, dict], None] | None = None) -> tuple[Path, dict]:
    try:
        payload = read(path)
        if fits is not None:
            fits(path, payload)
        return path, payload
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UsageError("checkpoint not found", str(path), "give an existing file to train.resume, or auto") from None
    except ValueError as err:
        raise UsageError(f"checkpoint cannot be loaded ({err})", str(path), "use another checkpoint") from None


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """A checkpoint continues this run only if the model and data configs are the same."""
    for section in MUST_MATCH:
        theirs, ours = saved.get(section, {}), current[section]
        diff = sorted(k for k in set(theirs) | set(ours)
                      if theirs.get(k) != ours.get(k) and f"{section}.{k}" not in MAY_DIFFER)
        if diff:
            key = f"{section}.{diff[0]}"
            raise UsageError(
                f"checkpoint was made with {key}={theirs.get(diff[0])!r}, this command has {ours.get(diff[0])!r}",
                str(path), "use the same config to continue this run, or another run.dir for a new one")
