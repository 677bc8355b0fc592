"""Test-only behaviour for the trainer, one module per behaviour.

The trainer imports the module named in AE_DIST_TEST_HOOK when it starts (`ae_dist.trainer.run`,
so under `python -m ae_dist.train`, torchrun, srun and submitit alike); a hook patches what it
needs and reads its parameters from the environment::

    AE_DIST_TEST_HOOK=tests.helpers.hooks.poison_batch POISON_STEP=15 python -m ae_dist.train ...

`tests.helpers.commands.hook_env(tmp, "poison_batch", POISON_STEP="15")` builds that environment.
"""
