"""Anomaly scores: each sample's reconstruction error against a threshold set on normal data.

    python -m ae_dist.score runs/digits --fpr 0.01 --anomalous-classes 0
    python -m ae_dist.score runs/digits data.name=synthetic --percentile 99     # other data, same config keys
    torchrun --nproc_per_node=2 -m ae_dist.score runs/digits

Scores the run's test split (or the data that the overrides name). The threshold comes from
the errors of the run's validation split when it has one (``data.val_fraction > 0``), else of
its training split, at a false-positive rate (``--fpr``: that share of those samples is flagged)
or a percentile; ``threshold.json`` says which, on what, with which weights. Writes into OUT
(default ``RUN/score``): ``scores.npy`` (per-sample mean squared error), ``flags.npy`` (score >
threshold), ``labels.npy``, ``threshold.json``, ``worst.png`` (the worst-reconstructed samples
above their reconstructions) and the encode outputs it read (``reference/``, ``scored/``).
With ``--anomalous-classes``, AUROC and AUPRC (scikit-learn's) are printed and stored. Exit
status as `ae_dist.encode`: 0 done, 2 bad input, 75 stopped (rerun to continue), 1 other failures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ae_dist.dist.preemption import FINISHING, StopSignals, exit_status
from ae_dist.errors import UsageError, reporting
from ae_dist.infer import cli
from ae_dist.infer.load import read_config

DESCRIPTION = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1]
WORST = 10  # samples shown in worst.png


def parser() -> cli.Parser:
    made = cli.parser("ae_dist.score", DESCRIPTION)
    rule = made.add_mutually_exclusive_group()
    rule.add_argument("--fpr", type=float, help="false-positive rate on the reference split (default 0.01)")
    rule.add_argument("--percentile", type=float, help="threshold at this percentile (0-100) of the reference errors")
    made.add_argument("--anomalous-classes", default="", metavar="A,B",
                      help="labels (ints or class names) that mark anomalies: AUROC and AUPRC are computed")
    made.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split scored (default test)")
    made.add_argument("--out", type=Path, help="output folder (default: RUN/score)")
    made.add_argument("--overwrite", action="store_true", help="replace results of another run, weights or dataset in --out")
    made.add_argument("--chunk-rows", type=cli.positive, default=4096, help="rows per chunk of the encode passes")
    made.add_argument("--batch-size", type=cli.positive, help="rows per forward pass (default: train.eval_batch_size)")
    return made


def threshold_rule(args) -> tuple[str, float]:
    if args.percentile is not None:
        if not 0 <= args.percentile <= 100:
            raise UsageError(f"--percentile {args.percentile:g} is not between 0 and 100", "--percentile", "use e.g. 99")
        return "percentile", args.percentile
    fpr = 0.01 if args.fpr is None else args.fpr
    if not 0 < fpr < 1:
        raise UsageError(f"--fpr {fpr:g} is not between 0 and 1", "--fpr", "use e.g. 0.01")
    return "fpr", fpr


def anomalous_classes(text: str, names: tuple[str, ...] | None) -> list[int]:
    found = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        if token.lstrip("-").isdigit():
            found.append(int(token))
        elif names is not None and token in names:
            found.append(names.index(token))
        else:
            raise UsageError(f"unknown class {token[:40]!r}", "--anomalous-classes",
                             f"give label numbers{' or names: ' + ', '.join(names) if names else ''}")
    return found


def threshold_of(reference, rule: str, value: float) -> float:
    """The score above which a sample is flagged: at most ``fpr`` of the reference errors lie above it."""
    import numpy as np

    quantile = 1 - value if rule == "fpr" else value / 100
    return float(np.quantile(np.asarray(reference, dtype=np.float64), quantile, method="higher"))


def write_scores(out: Path, scored: Path, reference: Path, rule: str, value: float, classes: list[int],
                 provenance: dict[str, Any]) -> dict[str, Any]:
    """scores.npy, flags.npy, labels.npy and threshold.json from the encode outputs; the record written."""
    import numpy as np

    from ae_dist.infer.outputs import write_json

    ref_errors = np.load(reference / "errors.npy", mmap_mode="r", allow_pickle=False)
    if not len(ref_errors):
        raise UsageError("the reference split is empty", str(reference), "train with a training split")
    scores = np.load(scored / "errors.npy", allow_pickle=False)
    labels = np.load(scored / "labels.npy", allow_pickle=False)
    threshold = threshold_of(ref_errors, rule, value)
    flags = scores > threshold
    record = {**provenance, "threshold": threshold, "rule": rule, rule: value, "count": int(len(scores)),
              "flagged": int(flags.sum()), "reference_flagged_share": float((np.asarray(ref_errors) > threshold).mean())}
    if classes:
        from sklearn.metrics import average_precision_score, roc_auc_score

        truth = np.isin(labels, classes)
        record["anomalous_classes"] = classes
        if truth.any() and not truth.all():
            record["auroc"] = float(roc_auc_score(truth, scores))
            record["auprc"] = float(average_precision_score(truth, scores))
    for name, values in (("scores", scores.astype(np.float32)), ("flags", flags), ("labels", labels)):
        tmp = out / f".{name}.tmp.npy"
        np.save(tmp, values, allow_pickle=False)
        tmp.replace(out / f"{name}.npy")
    write_json(out / "threshold.json", record)
    return record


def draw_worst(out: Path, model, split, scores, title: str) -> None:
    import numpy as np
    import torch

    from ae_dist.monitor import plots

    worst = torch.from_numpy(np.argsort(-np.asarray(scores), kind="stable")[:WORST].copy())
    images = split.images[worst].float().div_(255)
    with torch.no_grad():
        recons = model.cpu().eval()(images)
    plots.draw_reconstructions(images, recons, out / "worst.png", title)


@reporting
def main(argv: list[str] | None = None) -> int:
    stop = StopSignals.install()
    args = cli.parse(parser(), argv)
    rule, value = threshold_rule(args)
    own = read_config(args.run_dir)
    config = read_config(args.run_dir, args.overrides)
    from ae_dist.data import CLASS_NAMES

    own_names = config.data.name in ("folder", "array")  # class names known once the data is read (its manifest)
    classes = None if own_names else anomalous_classes(args.anomalous_classes, CLASS_NAMES.get(config.data.name))
    from ae_dist.infer import run as infer_run

    out = args.out or args.run_dir / "score"
    reference = "val" if own.data.val_fraction > 0 else "train"
    not_data = tuple(o for o in args.overrides if not o.startswith("data."))  # the reference is the run's own data
    parts = [infer_run.Part(reference, out / "reference", not_data),
             infer_run.Part(args.split, out / "scored", tuple(args.overrides))]
    result = infer_run.encode(args.run_dir, args.weights, args.overrides, parts, stop, chunk_rows=args.chunk_rows,
                              batch_size=args.batch_size, overwrite=args.overwrite)
    if result.signal:
        stop.exiting()
        return exit_status(result.signal)
    stop.phase = FINISHING
    if not result.info.is_main:
        return 0
    provenance = {"run": str(args.run_dir.resolve()), "weights": result.weights.choice,
                  "weights_sha256": result.manifests[args.split]["weights_sha256"],
                  "reference": {"split": reference, "folder": str(out / "reference"),
                                "data_digest": result.manifests[reference]["data_digest"],
                                "count": result.manifests[reference]["count"]},
                  "scored": {"split": args.split, "folder": str(out / "scored"),
                             "data_digest": result.manifests[args.split]["data_digest"]}}
    import numpy as np

    from ae_dist import data

    split = data.load_split(config.data, args.split)
    if classes is None:
        classes = anomalous_classes(args.anomalous_classes, split.class_names(config.data.name))
    record = write_scores(out, out / "scored", out / "reference", rule, value, classes, provenance)
    draw_worst(out, result.model, split, np.load(out / "scores.npy", allow_pickle=False),
               f"worst-reconstructed {args.split} samples above their reconstructions ({result.weights.source})")
    print(f"threshold {record['threshold']:.6g} ({rule} {value:g} of the {reference} split's {record['reference']['count']} "
          f"errors); flagged {record['flagged']} of {record['count']} {args.split} samples")
    if "auroc" in record:
        print(f"AUROC {record['auroc']:.4f}  AUPRC {record['auprc']:.4f} (anomalous classes {classes})")
    elif classes:
        print(f"AUROC and AUPRC not defined: the {args.split} split does not hold both normal and anomalous classes {classes}")
    print(f"scores in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
