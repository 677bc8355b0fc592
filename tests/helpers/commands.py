"""The trainer's command line, the environment a child trainer runs in, polling, weights.

Children run with the repository as working folder and on PYTHONPATH, so that they import
this checkout's `ae_dist` and `launch` and, under `hook_env`, a test hook (`tests.helpers.hooks.*`) wherever
they start: `python -m ae_dist.train`, torchrun's workers, submitit's tasks, SLURM's nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RUN_TIMEOUT = 240  # seconds for one run of TINY on a busy 2-core machine

# A small, fast experiment: the seed's model on the bundled digits (3 epochs; tests.helpers.schedule counts its steps),
# pictures every epoch.
TINY = ["--config", str(REPO / "configs" / "digits.yaml"), "train.epochs=3", "train.log_every=5",
        "checkpoint.every_steps=10", "run.progress=lines", "wandb.images_every_epochs=1", "optim.lr=1e-3"]
LAUNCHER_PREFIXES = ("SLURM_", "WANDB_", "TORCHELASTIC_", "SUBMITIT_")
TEST_HOOK = "AE_DIST_TEST_HOOK"  # the hook that helpers/site/sitecustomize.py imports
HOOK_SITE = Path(__file__).resolve().parent / "site"
TORCHRUN_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a child trainer: no launcher variables, W&B kept inside ``tmp``, this repository first."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(LAUNCHER_PREFIXES) and k not in TORCHRUN_KEYS and k != TEST_HOOK}
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        env[name] = str(tmp / "wandb-home")
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1", HOME=str(tmp / "home"),
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    env.update(extra)
    return env


def hook_env(tmp: Path, hook: str, **extra: str) -> dict[str, str]:
    """``clean_env`` with the test hook ``tests.helpers.hooks.<hook>``, imported at start by every Python it runs
    (``helpers/site/sitecustomize.py`` on PYTHONPATH)."""
    env = clean_env(tmp, **{TEST_HOOK: f"tests.helpers.hooks.{hook}"}, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HOOK_SITE), env["PYTHONPATH"]])
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


def run_module(module: str, *args: str, tmp: Path, cwd: Path | None = None, env: dict[str, str] | None = None,
               python: str | Path = PYTHON, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m module args`` run to its end (from ``cwd``, default ``tmp``), output captured: every test that
    runs one of the project's commands once starts it here."""
    return subprocess.run([str(python), "-m", module, *args], cwd=cwd or tmp, env=env or clean_env(tmp),
                          capture_output=True, text=True, timeout=timeout)


def run_dir_of(args: list[str]) -> Path:
    """The ``run.dir=`` of a trainer command line."""
    return Path(next(a for a in args if a.startswith("run.dir=")).split("=", 1)[1])


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
