"""Using a trained run: its model, and outputs written by every rank into one set of files.

Owns loading a run's model with the weights a user picks (`load`: ``final | best | ema | STEP``,
the one spelling of every command), the preallocated ``.npy`` outputs that ranks fill by row
range and the manifest written last (`outputs`), the fixed chunks of work whose completion is
recorded so that a stopped or killed job resumes at any world size (`chunks`), and the pass
that computes latent codes and per-sample errors over a split (`passes`). Imports
`ae_dist.errors`, `ae_dist.config`, `ae_dist.dist`, `ae_dist.run`, `ae_dist.monitor`,
`ae_dist.data` and `ae_dist.models`; the commands on top (`ae_dist.encode`, `ae_dist.score`,
`ae_dist.export`, `ae_dist.evaluate`) import it, and ``ae_dist.load`` is `load.load`.
"""
