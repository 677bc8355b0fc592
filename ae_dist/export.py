"""The encoder, decoder or whole model of a run as a file other programs load: torch.export (.pt2) or ONNX.

    python -m ae_dist.export runs/digits                                  # runs/digits/export/model.pt2
    python -m ae_dist.export runs/digits --part encoder --format pt2
    python -m ae_dist.export runs/digits --part decoder --format onnx     # needs the onnx extra: pip install 'ae-dist[onnx]'

The batch dimension is dynamic. After writing, the file is loaded back (``torch.export.load``, or
onnxruntime for ONNX) and run on the run's test split (its codes, for the decoder); the largest
difference from the model itself is printed. Load a .pt2 with
``torch.export.load(path).module()(x)``; inputs are float (N, C, H, W) in [0, 1] (codes
(N, latent_dim) for the decoder).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ae_dist.errors import UsageError, reporting
from ae_dist.infer import cli
from ae_dist.infer.load import read_config

DESCRIPTION = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1]
PARTS = ("model", "encoder", "decoder")


def parser() -> cli.Parser:
    made = cli.parser("ae_dist.export", DESCRIPTION)
    made.add_argument("--part", default="model", choices=PARTS, help="what to export (default: the whole model)")
    made.add_argument("--format", default="pt2", choices=("pt2", "onnx"), help="torch.export archive or ONNX")
    made.add_argument("--out", type=Path, help="the file to write (default: RUN/export/<part>.<format>)")
    return made


@reporting
def main(argv: list[str] | None = None) -> int:
    args = cli.parse(parser(), argv)
    config = read_config(args.run_dir, args.overrides)
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UsageError("ONNX export needs onnx and onnxruntime", "--format onnx",
                             "pip install 'ae-dist[onnx]', or use --format pt2") from None
    import torch

    from ae_dist import data
    from ae_dist.infer import exporting
    from ae_dist.infer.load import load_model

    model, config, weights = load_model(args.run_dir, args.weights, args.overrides)
    torch.set_num_threads(config.train.threads or torch.get_num_threads())
    test = data.load_split(config.data, "test")
    inputs = exporting.inputs_for(model, args.part, test)
    out = args.out or args.run_dir / "export" / f"{args.part}.{args.format}"
    out.parent.mkdir(parents=True, exist_ok=True)
    module = exporting.part_of(model, args.part)
    if args.format == "pt2":
        exporting.save_pt2(module, inputs, out)
        diff = exporting.max_diff(module(inputs), exporting.run_pt2(out, inputs))
    else:
        exporting.save_onnx(module, inputs, out)
        diff = exporting.max_diff(module(inputs), exporting.run_onnx(out, inputs))
    print(f"exported the {args.part} ({weights.source}) to {out}; reloaded and run on {len(inputs)} test inputs: "
          f"max |diff| {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
