"""What a run folder holds, read with the trainer's own readers (`ae_dist.run.metrics.read_metrics`,
`ae_dist.run.checkpoint`, `ae_dist.run.folder.RunDir`): metrics records, checkpoints, leftovers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ae_dist.run.checkpoint import NAME, list_checkpoints, read
from ae_dist.run.folder import RunDir
from ae_dist.run.metrics import read_metrics
from tests.helpers.schedule import Schedule


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The complete records of the run's metrics.jsonl (the trainer may be writing its last line)."""
    return read_metrics(RunDir(Path(run_dir)).metrics)


def logged_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in metrics(run_dir) if r["kind"] == "train"]


def epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in metrics(run_dir) if r["kind"] == "epoch"]


def has_logged_a_step(run_dir: Path) -> bool:
    return bool(logged_steps(run_dir))


def run_id(run_dir: Path) -> str:
    """The W&B run id the run folder's run.json holds."""
    return RunDir(Path(run_dir)).read_info()["wandb_run_id"]


def checkpoint(run_dir: Path, step: int) -> Path:
    return RunDir(Path(run_dir)).checkpoints / f"step_{step:08d}.pt"


def checkpoint_steps(run_dir: Path) -> list[int]:
    return [int(NAME.match(p.name)[1]) for p in list_checkpoints(RunDir(Path(run_dir)).checkpoints)]


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files a write left behind anywhere in the run folder (W&B's own folder aside)."""
    return sorted(str(p.relative_to(run_dir)) for p in Path(run_dir).rglob("*.tmp*") if "wandb" not in p.parts)


def finite_checkpoint(path: Path) -> dict:
    """Load with weights_only=True; assert every tensor of the model and optimizer is finite."""
    payload = read(path)
    tensors = [*payload["model"].values(),
               *(t for state in payload["optimizer"]["state"].values() for t in state.values() if torch.is_tensor(t))]
    assert tensors and all(torch.isfinite(t).all() for t in tensors), f"{path} holds NaN/Inf"
    return payload


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace the run's metrics.jsonl with ``records`` (a run folder cut back to an earlier state)."""
    RunDir(Path(run_dir)).metrics.write_text("".join(json.dumps(r) + "\n" for r in records))


def metrics_intact(run_dir: Path, expected: Schedule) -> str:
    """Assert metrics.jsonl holds each expected record once, steps only increasing; say what it holds."""
    records = metrics(run_dir)
    keys = [(r["step"], r["kind"]) for r in records]
    assert keys == sorted(keys, key=lambda k: (k[0], k[1] == "epoch")) and len(set(keys)) == len(keys), keys
    assert [r["step"] for r in records if r["kind"] == "train"] == expected.logged()
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(1, expected.epochs + 1))
    return f"none: metrics.jsonl complete ({len(records)} records, no gap, no duplicate)"
