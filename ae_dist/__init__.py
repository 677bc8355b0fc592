"""ae-dist: one autoencoder training loop for a CPU, torchrun and SLURM (submitit or sbatch)."""

__version__ = "0.1.0"
