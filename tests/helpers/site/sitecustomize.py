"""Imported by every Python interpreter the tests start with this folder on PYTHONPATH (`commands.hook_env`).

It imports the test hook named in AE_DIST_TEST_HOOK (``tests.helpers.hooks.<name>``) before the program runs,
so the hook's patches are in place under ``python -m ae_dist.train``, torchrun's workers, srun tasks and
submitit's jobs alike, and the production code imports nothing of the tests.
"""

import importlib
import os

if os.environ.get("AE_DIST_TEST_HOOK"):
    importlib.import_module(os.environ["AE_DIST_TEST_HOOK"])
