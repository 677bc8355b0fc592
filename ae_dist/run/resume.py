"""What a start continues from, decided once by rank 0 and agreed by every rank.

Rank 0 reads the run folder (nothing is written here): the newest complete checkpoint (or the
one ``train.resume`` names), and whether this command's config may continue it. Keys that only
change where output goes or how it is shown pass, and so do ``train.accumulate`` (like a world-size
change: the float order only) and a longer ``train.epochs`` under a constant ``optim.schedule`` (a
decaying schedule's horizon is train.epochs, so a longer run would reshape past learning rates); any
other change (lr, batch, seed, precision, a shorter run, ...) is refused naming each key
``old -> new``, unless ``train.resume=changed``, and then recorded in ``config-history.jsonl``.
Every rank then loads the checkpoint rank 0 chose, after checking that it sees the run folder
rank 0 sees (the lease token): ranks that each picked "the newest checkpoint" from their own
view of a node-local or stale folder would resume from different steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ae_dist.errors import UsageError, printable
from ae_dist.run import checkpoint
from ae_dist.run.folder import RunDir, launch_command

# Keys that do not change how the weights are made: where output goes, how it is shown, when to stop
# (train.accumulate, like the world size, changes only the order of the float sums).
PASS = ("wandb.", "checkpoint.", "run.progress", "run.lease_stale_s", "train.log_every", "train.threads",
        "train.max_steps", "train.accumulate", "data.root", "data.download",
        # where the data lies and how a bad file is met: the dataset itself is compared by its identity, data.digest
        "data.path", "data.labels", "data.test_path", "data.test_labels", "data.cache_dir", "data.on_bad_image",
        "dist.timeout_s", "dist.static_graph", "dist.bucket_view")
NOT_COMPARED = ("run.dir", "train.resume")  # where the folder is now, and how this start was asked to resume
HISTORY = "config-history.jsonl"


@dataclass
class Decision:
    """Rank 0's answer: the checkpoint to load (None: start fresh) and the accepted config changes."""

    path: Path | None = None
    payload: dict[str, Any] | None = field(default=None, repr=False)
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in tree.items() if isinstance(values, dict)
            for key, value in values.items()}


def changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every key whose value differs between the checkpoint's config and this command's: key -> (old, new)."""
    old, new = flatten(saved), flatten(current)
    return {key: (old[key], new[key]) for key in new
            if key in old and old[key] != new[key] and key not in NOT_COMPARED}


def refused(found: dict[str, tuple[Any, Any]], current: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """The changes that need ``train.resume=changed``; ``current`` is this command's resolved config."""
    constant = (current or {}).get("optim", {}).get("schedule", "constant") == "constant"
    out = {}
    for key, (old, new) in found.items():
        if any(key == p or (p.endswith(".") and key.startswith(p)) for p in PASS):
            continue
        if key == "train.epochs" and isinstance(old, int) and isinstance(new, int) and new > old and constant:
            continue
        out[key] = (old, new)
    return out


def decide(mode: str, run_dir: RunDir, resolved: dict[str, Any], shapes: dict[str, tuple[int, ...]],
           warn: Callable[[str], None]) -> Decision:
    """Rank 0: the checkpoint to continue from and the config changes this command brings (read-only).

    ``shapes`` are the model's tensor shapes: under ``auto`` a checkpoint whose tensors do not fit
    them is skipped like a damaged one; a checkpoint of another model config is an error.
    """
    if mode == "never":
        from ae_dist.run.metrics import read_metrics

        if checkpoint.list_checkpoints(run_dir.checkpoints) or read_metrics(run_dir.metrics):
            raise UsageError("train.resume=never, but the run folder already holds a run", str(run_dir.root),
                             "continue it with train.resume=auto, or start over in an empty run.dir")
        return Decision()
    def compatible(path: Path, payload: dict[str, Any]) -> None:
        checkpoint.check_compatible(payload["config"], resolved, path)
        checkpoint.check_tensors(payload, shapes)

    if mode in ("auto", "changed"):
        found = checkpoint.load_latest(run_dir.checkpoints, warn=warn, fits=compatible)
        if found is None:
            return Decision()
        path, payload = found
    else:
        path, payload = checkpoint.load_path(Path(mode), fits=compatible)
    found_changes = changes(payload["config"], resolved)
    needs_consent = refused(found_changes, resolved)
    if needs_consent and mode != "changed":
        listed = ", ".join(f"{key} {_show(old)} -> {_show(new)}" for key, (old, new) in needs_consent.items())
        raise UsageError(f"this command changes how the run's weights are made: {listed}", str(run_dir.root),
                         "use the run's values to continue it, add train.resume=changed to continue with these "
                         "(recorded in config-history.jsonl), or choose another run.dir")
    return Decision(path, payload, found_changes)


def _show(value: Any) -> str:
    return printable(repr(value), 60)


def record(run_dir: RunDir, step: int, found: dict[str, tuple[Any, Any]]) -> None:
    """One line of config-history.jsonl per accepted change of the run's config."""
    if not found:
        return
    line = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "changed": {key: {"old": old, "new": new} for key, (old, new) in found.items()},
            "command": launch_command()}
    with open(run_dir.root / HISTORY, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
