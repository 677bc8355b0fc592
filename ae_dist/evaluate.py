"""Test loss and pictures for a finished or running run.

    python -m ae_dist.evaluate runs/digits

Reads the run's resolved config.yaml and its final model.pt, or the newest complete
checkpoint while the run is still training; prints the test loss and redraws recon.png,
latent.png and loss.png in the run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from ae_dist import checkpoint, data, engine, plots
from ae_dist.config import from_dict
from ae_dist.dist import DistInfo
from ae_dist.errors import UsageError, reporting
from ae_dist.metrics import read_metrics
from ae_dist.models import build_model
from ae_dist.run_dir import RunDir

PICTURE_COUNT = 10


def load_run_model(run_dir: Path) -> tuple[torch.nn.Module, object, str]:
    """The run's model with its final weights (or newest checkpoint's), its config, and the source."""
    folder = RunDir(run_dir)
    config_path = folder.config
    if not config_path.is_file():
        raise UsageError("not a run folder (no config.yaml)", str(run_dir), "give the run.dir of a run")
    try:
        config = from_dict(yaml.safe_load(config_path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError:
        raise UsageError("config.yaml is not valid YAML", str(config_path), "restore it from a checkpoint") from None
    model = build_model(config.model)
    final = folder.model
    if final.is_file():
        try:
            state, source = torch.load(final, map_location="cpu", weights_only=True), str(final)
        except Exception as err:
            raise UsageError(f"model.pt cannot be loaded ({err.__class__.__name__})", str(final),
                             "delete it and rerun the training command to rewrite it") from None
    else:
        found = checkpoint.load_latest(folder.checkpoints)
        if found is None:
            raise UsageError("no model.pt and no checkpoint yet", str(run_dir), "wait for the first checkpoint")
        state, source = found[1]["model"], f"{found[0]} (step {found[1]['step']})"
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"weights do not fit the run's model ({str(err).splitlines()[0][:80]})", source,
                         "check that config.yaml belongs to this run") from None
    return model, config, source


@reporting
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ae_dist.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run folder (run.dir)")
    args = parser.parse_args(argv)
    model, config, source = load_run_model(args.run_dir)
    test = data.load_split(config.data, train=False)
    info = DistInfo(0, 0, 1, 1, torch.device("cpu"), None)
    loss = engine.evaluate(model, test, config.train.eval_batch_size, config.train, info)
    with torch.no_grad():
        shown = test.images[:PICTURE_COUNT].float().div_(255)
        recon = model(shown)
    codes = engine.encode_all(model, test, config.train.eval_batch_size)
    folder = RunDir(args.run_dir)
    plots.draw_reconstructions(shown, recon, folder.picture("recon"))
    plots.draw_latent(codes, test.labels, folder.picture("latent"))
    records = read_metrics(folder.metrics)
    if records:
        plots.draw_loss(records, folder.picture("loss"))
    print(f"test loss {loss:.6f} ({len(test)} images, {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
