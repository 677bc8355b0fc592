"""The training recipe around the step. Owns the learning-rate schedule (`schedule`), the weights' moving
average (`ema`), the noise of the denoising and variational models keyed by seed, step and sample
(`noise`), the loss of each model kind (`objective`), and model selection on the validation split
with early stopping (`selection`). `ae_dist.engine.train_step` and the loop in `ae_dist.trainer` call them.

May import `ae_dist.errors` and `ae_dist.config`; not the run folder, data, models, monitoring or the loop.
Import its modules by name.
"""
