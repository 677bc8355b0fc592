"""Test loss and pictures of a finished or running run, written to RUN/eval/.

    python -m ae_dist.evaluate runs/digits
    python -m ae_dist.evaluate runs/digits data.root=/scratch/data    # overrides of the run's config
    python -m ae_dist.evaluate runs/digits --weights best             # final | best | ema | STEP

Reads the run's resolved config.yaml (as safely as `--config`: no aliases, no repeated keys)
and its final model.pt, or the newest complete checkpoint while the run is still training;
prints the test loss beside the run's baseline (PCA at the latent size, `ae_dist.baseline`: the
one the run folder holds, else computed here and not stored) and draws recon.png, latent.png
and loss.png into RUN/eval/, titled with the weights they show. The training's own pictures
in RUN are left as they are. A run folder that is not one (no config.yaml, a config that is
not a mapping or not UTF-8, weights of another model) is one `error:` line and exit 2. torch
is imported only once the arguments and the config are known to be good.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ae_dist.config import Config, load_saved, resolve_paths
from ae_dist.config.cli import evaluate_args
from ae_dist.errors import UsageError, reporting
from ae_dist.run.folder import RunDir
from ae_dist.run.metrics import read_metrics

if TYPE_CHECKING:
    import torch

    from ae_dist.baseline import Baseline

PICTURE_COUNT = 10
EVAL_FOLDER = "eval"


def read_run_config(folder: RunDir, overrides: list[str] | None = None) -> Config:
    if not folder.config.is_file():
        raise UsageError("not a run folder (no config.yaml)", str(folder.root), "give the run.dir of a run")
    return resolve_paths(load_saved(folder.config, overrides))  # data.root=~/data: below $HOME


def load_weights(folder: RunDir) -> tuple[dict[str, Any], str]:
    """The final weights (model.pt), else the newest complete checkpoint's, and where they came from."""
    import torch

    from ae_dist.run import checkpoint

    if folder.model.is_file():
        try:
            state = torch.load(folder.model, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds for a damaged file
            raise UsageError(f"model.pt cannot be loaded ({err.__class__.__name__})", str(folder.model),
                             "delete it and rerun the training command to rewrite it") from None
        steps = [r["step"] for r in read_metrics(folder.metrics) if r.get("kind") == "epoch"]
        return state, f"model.pt, step {steps[-1]}" if steps else "model.pt"
    found = checkpoint.load_latest(folder.checkpoints)
    if found is None:
        raise UsageError("no model.pt and no checkpoint yet", str(folder.root), "wait for the first checkpoint")
    path, saved = found
    return saved["model"], f"{path.name}, step {saved['step']}"


def load_run_model(run_dir: Path, overrides: list[str] | None = None, weights: str | None = None,
                   ) -> tuple[torch.nn.Module, Config, str]:
    """The run's model with the ``weights`` chosen (`ae_dist.infer.load`), by default its final weights or, while
    it trains, the newest checkpoint's; its config, and the source."""
    from ae_dist.models import build_model

    if weights is not None:
        from ae_dist.infer.load import load_model

        model, config, chosen = load_model(run_dir, weights, overrides)
        return model, config, chosen.source
    folder = RunDir(Path(run_dir))
    config = read_run_config(folder, overrides)
    state, source = load_weights(folder)
    model = build_model(config.model, image_shape(config))
    if not isinstance(state, dict):
        raise UsageError(f"weights are a {type(state).__name__}, not a state_dict", source, "check the run folder")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError, AttributeError) as err:
        raise UsageError(f"weights do not fit the run's model ({str(err).splitlines()[0][:80]})", source,
                         "check that config.yaml belongs to this run") from None
    return model, config, source


def image_shape(config: Config) -> tuple[int, int, int]:
    """(C, H, W) of the run's data: the prepared dataset's (prepared here when it is not yet), else the seed's."""
    return test_split(config).shape


def test_split(config: Config):
    from ae_dist import data

    if config.data.name in ("folder", "array"):
        import torch

        from ae_dist.dist.group import DistInfo
        from ae_dist.prepare import prepare

        prepare(config.data, DistInfo(0, 0, 1, 1, torch.device("cpu"), None))
    return data.load_split(config.data, "test")


def draw(model: torch.nn.Module, config: Config, folder: RunDir, source: str) -> tuple[float, int]:
    """Test loss over the whole test split, and the pictures in RUN/eval/."""
    import torch

    from ae_dist import engine
    from ae_dist.dist.group import DistInfo
    from ae_dist.monitor import plots

    test = test_split(config)
    info = DistInfo(0, 0, 1, 1, torch.device("cpu"), None)
    loss = engine.evaluate(model, test, config.train.eval_batch_size, config.train, info)
    with torch.no_grad():
        model.eval()
        shown = test.images[:PICTURE_COUNT].float().div_(255)
        recon = model(shown)
    codes = engine.encode_all(model, test, config.train.eval_batch_size)
    out = folder.root / EVAL_FOLDER
    out.mkdir(exist_ok=True)
    plots.draw_reconstructions(shown, recon, out / "recon.png", f"test images above reconstructions ({source})")
    plots.draw_latent(codes, test.labels, out / "latent.png", f"test-set latent codes by class ({source})",
                      test.class_names(config.data.name))
    records = read_metrics(folder.metrics)
    if records:
        plots.draw_loss(records, out / "loss.png")
    return loss, len(test)


@reporting
def main(argv: list[str] | None = None) -> int:
    args = evaluate_args(argv)
    folder = RunDir(args.run_dir)
    read_run_config(folder, args.overrides)  # a bad folder or override: one line, before torch loads
    model, config, source = load_run_model(args.run_dir, args.overrides, args.weights)
    loss, count = draw(model, config, folder, source)
    base = run_baseline(config, folder)
    versus = f", {loss / base.test_loss:.2f}x {base.name}'s {base.test_loss:.6f}" if base else ""
    print(f"test loss {loss:.6f} ({count} images, {source}{versus}); pictures in {folder.root / EVAL_FOLDER}")
    if base is not None:
        print(base.verdict(loss))
    return 0


def run_baseline(config: Config, folder: RunDir) -> Baseline | None:
    """The baseline the run folder holds for this config, else computed from the data (and not stored)."""
    from ae_dist import baseline, data

    found = baseline.cached(config, folder)
    if found is None:
        found = baseline.compute(data.load_split(config.data, "train"), data.load_split(config.data, "test"),
                                 config.model.latent_dim, config.train.seed, config.train.eval_batch_size)
    return found


if __name__ == "__main__":
    sys.exit(main())
