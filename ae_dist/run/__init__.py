"""The run folder (``run.dir``) and everything that lives in it.

Owns the folder's file names and provenance (`folder`: ``run.json``), the one-writer lease
(`lease`), checkpoints (`checkpoint`), the decision to resume, refuse or finish (`resume`),
whether the run is complete (`completion`),
``metrics.jsonl`` (`metrics`), the W&B identity kept in the folder (`identity`), run.dir
templates made concrete (`templates`), and what rank 0 decides for every rank (`agree`). May
import `ae_dist.errors`, `ae_dist.config` and `ae_dist.dist`; not data, models, monitoring or
the loop. Import its modules by name.
"""
