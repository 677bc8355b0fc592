"""What a person watching a run sees: W&B, the terminal, per-rank timing and the pictures.

Owns the W&B run (`wandb_run`: never stops training), the one object the loop reports to
(`monitor`), the progress bar and epoch lines (`console`), per-rank step times and stragglers
(`ranks`), and the pictures (`plots`). May import `ae_dist.errors`, `ae_dist.config`,
`ae_dist.dist` and `ae_dist.run`; not the data, the models or the loop. Import its modules by
name.
"""
