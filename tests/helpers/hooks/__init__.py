"""Test-only behaviour for the trainer, one module per behaviour.

Every Python a test starts with `tests.helpers.commands.hook_env` imports the module named in
AE_DIST_TEST_HOOK before its program runs (``helpers/site/sitecustomize.py`` is on its PYTHONPATH),
so under `python -m ae_dist.train`, torchrun, srun and submitit alike; a hook patches what it
needs and reads its parameters from the environment. The trainer knows nothing of it::

    AE_DIST_TEST_HOOK=tests.helpers.hooks.poison_batch POISON_STEP=15 python -m ae_dist.train ...

`tests.helpers.commands.hook_env(tmp, "poison_batch", POISON_STEP="15")` builds that environment.
"""
