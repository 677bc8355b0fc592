"""A run's model, built from the run's own config.yaml, with the weights a user picks.

    >>> import ae_dist
    >>> model = ae_dist.load("runs/digits")                   # final weights (model.pt)
    >>> model = ae_dist.load("runs/digits", weights="best")   # or "ema", or a checkpoint step: 500 / "500"
    >>> z = model.encode(x); x_hat = model.decode(z)          # x: float (N, C, H, W) in [0, 1]

One spelling of the weights everywhere (``--weights`` of evaluate, encode, score and export):
``final`` = ``model.pt``, ``best`` = ``model-best.pt``, ``ema`` = ``model-ema.pt``, ``STEP`` = the
checkpoint of that step (``checkpoints/step_XXXXXXXX.pt``). Loading is strict: every tensor of
the model, of its shape, and nothing else.

`load` raises `ae_dist.errors.UsageError` (an `AeDistError`) for a folder that is not a run, a
weights choice the run does not have, and weights that are damaged or belong to another model;
``str(err)`` is the one line the commands print (``error: <what> (<where>): <fix>``). It never
exits the caller's process.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ae_dist.config import Config, load_saved
from ae_dist.errors import UsageError
from ae_dist.run.folder import RunDir

if TYPE_CHECKING:
    import torch

WEIGHTS_HELP = "final (model.pt) | best (model-best.pt) | ema (model-ema.pt) | STEP (the checkpoint of that step)"
NAMED = ("final", "best", "ema")
STEP = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Weights:
    """Where the chosen weights come from: the choice as spelled, the file, and a description for titles."""

    choice: str
    path: Path
    source: str  # "model.pt", "checkpoint step 500", ...

    def digest(self) -> str:
        """sha256 of the weights file: the identity of the weights in every manifest."""
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()


def read_config(run: str | Path, overrides: list[str] | None = None) -> Config:
    """The run's resolved config.yaml (plus dotted overrides); UsageError for a folder that is not a run."""
    folder = RunDir(Path(run))
    if not folder.config.is_file():
        raise UsageError("not a run folder (no config.yaml)", str(folder.root), "give the run.dir of a run")
    return load_saved(folder.config, overrides)


def available(folder: RunDir) -> list[str]:
    """The weights choices this run has, as they are spelled."""
    from ae_dist.run.checkpoint import NAME, list_checkpoints

    have = [name for name, path in zip(NAMED, (folder.model, folder.model_best, folder.model_ema)) if path.is_file()]
    return have + [str(int(NAME.match(p.name)[1])) for p in list_checkpoints(folder.checkpoints)]


def choose(run: str | Path, weights: str | int = "final") -> Weights:
    """The file of the ``weights`` choice; UsageError naming what the run has when it has not that one."""
    folder = RunDir(Path(run))
    choice = str(weights).strip()
    if choice in NAMED:
        path = {"final": folder.model, "best": folder.model_best, "ema": folder.model_ema}[choice]
        source = path.name
    elif STEP.match(choice):
        path = folder.checkpoints / f"step_{int(choice):08d}.pt"
        source = f"checkpoint step {int(choice)}"
    else:
        raise UsageError(f"unknown weights choice {choice[:40]!r}", "--weights", f"use {WEIGHTS_HELP}")
    if not path.is_file():
        have = available(folder)
        raise UsageError(f"the run has no {choice} weights ({path.name} missing)", str(folder.root),
                         f"choose one it has: {', '.join(have)}" if have else "the run has no weights yet: train it first")
    return Weights(choice, path, source)


def read_state(weights: Weights) -> dict[str, Any]:
    """The state_dict of the chosen file: model.pt-like files hold it plainly, checkpoints under "model"."""
    import torch

    from ae_dist.run import checkpoint

    if weights.choice not in NAMED:
        try:
            return checkpoint.read(weights.path)["model"]
        except ValueError as err:
            raise UsageError(f"checkpoint cannot be loaded ({err})", str(weights.path),
                             "choose another --weights (another step, or final)") from None
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise UsageError(f"{weights.path.name} cannot be loaded ({err.__class__.__name__})", str(weights.path),
                         "choose other --weights, or rerun the training command to rewrite it") from None
    if not isinstance(state, dict):
        raise UsageError(f"weights are a {type(state).__name__}, not a state_dict", str(weights.path),
                         "choose other --weights")
    return state


def input_shape(config: Config) -> tuple[int, int, int]:
    """(C, H, W) of the images the run's model takes: the seed's 1x28x28 for the built-in datasets, data.channels x
    data.size for a folder, the prepared array's own shape (its manifest, memory-mapped: nothing is read) for an array."""
    from ae_dist.models import IMAGE_SHAPE

    if config.data.name == "folder":
        return config.data.channels, *config.data.size
    if config.data.name == "array":
        from ae_dist.data import load_split

        return load_split(config.data, "test").shape
    return IMAGE_SHAPE


def build(config: Config, shape: tuple[int, int, int]) -> torch.nn.Module:
    """The run's model class for images of ``shape`` (C, H, W)."""
    from ae_dist.models import build_model

    return build_model(config.model, shape)


def load_model(run: str | Path, weights: str | int = "final", overrides: list[str] | None = None,
               ) -> tuple[torch.nn.Module, Config, Weights]:
    """The model in eval mode on the CPU, the run's config (with ``overrides``) and the weights it holds."""
    config = read_config(run, overrides)
    chosen = choose(run, weights)
    state = read_state(chosen)
    model = build(config, input_shape(config))
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, KeyError, AttributeError) as err:
        first = str(err).splitlines()[0][:100]
        raise UsageError(f"weights do not fit the run's model ({first})", str(chosen.path),
                         "check that config.yaml belongs to this run, or choose other --weights") from None
    return model.eval(), config, chosen


def load(run: str | Path, weights: str | int = "final") -> torch.nn.Module:
    """The trained model of the run folder ``run``, in eval mode, with ``.encode`` and ``.decode``.

    ``weights``: ``"final"`` (model.pt, the default), ``"best"``, ``"ema"`` or a checkpoint step.
    Raises `ae_dist.errors.UsageError` (see the module docstring); ``str(err)`` is its one line.
    """
    return load_model(run, weights)[0]
