"""ae-dist: one autoencoder training loop for a CPU, torchrun and SLURM (submitit or sbatch).

``ae_dist.load(run, weights="final")`` is the trained model of a run folder (`ae_dist.infer.load.load`),
imported on first use so that ``import ae_dist`` stays light (no torch).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from ae_dist.infer.load import load

        return load
    raise AttributeError(f"module 'ae_dist' has no attribute {name!r}")
