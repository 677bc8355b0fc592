"""Shared helpers: run the trainer as real processes (python -m, torchrun) on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers: wandb_offline, ...

from slurm_fixture import slurm_cluster  # noqa: E402, F401  (the local SLURM cluster, session-wide)

# A small, fast experiment: the seed's model on the bundled digits (23 steps per epoch).
TINY = ["--config", str(REPO / "configs" / "digits.yaml"), "train.epochs=3", "train.log_every=5",
        "checkpoint.every_steps=10", "run.progress=lines"]


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a child trainer: no launcher variables, W&B kept inside ``tmp``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "WANDB_", "TORCHELASTIC_", "SUBMITIT_"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        env[name] = str(tmp / "wandb-home")
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1", HOME=str(tmp / "home"))
    (tmp / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


def train_cmd(args: list[str], nproc: int = 1, torchrun_args: tuple[str, ...] = ()) -> list[str]:
    if nproc == 1 and not torchrun_args:
        return [PYTHON, "-m", "ae_dist.train", *args]
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *torchrun_args, "-m", "ae_dist.train", *args]


def run_train(args: list[str], tmp: Path, nproc: int = 1, timeout: float = 300, check: bool = True,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(train_cmd(args, nproc), cwd=REPO, env=env or clean_env(tmp), capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n"
                             f"--- stderr\n{result.stderr[-5000:]}")
    return result


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs by {(a[key] - b[key]).abs().max().item():.3g}"


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory) -> Callable[[tuple[str, ...], int], Path]:
    """Uninterrupted runs of TINY (+ extra args) shared by the tests that compare against them."""
    cache: dict[tuple[tuple[str, ...], int], Path] = {}

    def get(extra: tuple[str, ...] = (), nproc: int = 1) -> Path:
        key = (extra, nproc)
        if key not in cache:
            tmp = tmp_path_factory.mktemp("reference")
            run_train([*TINY, f"run.dir={tmp / 'run'}", *extra], tmp, nproc=nproc)
            cache[key] = tmp / "run"
        return cache[key]

    return get
