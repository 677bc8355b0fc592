"""What the tests share, one module per concern (imported as ``tests.helpers.<module>``).

    commands     the trainer's command line, a clean child environment, waiting, weights
    schedule     step counts of a test run, derived from its config
    processes    `Job`: real trainer (or launcher) processes started, signalled, killed, reaped
    run_files    what a run folder holds: metrics (the trainer's own reader), checkpoints
    faults       fault injection: a small disk, a frozen process, one clear error line, the fault table
    interrupted  runs killed at chosen points and rerun (shared by test_resume and test_wandb)
    launcher     `python -m launch` from a work folder; its registry; submitit's local tasks and their exit statuses
    wandb_offline  a reader of W&B's offline .wandb files
    slurm        the ``slurm_cluster`` fixture (the local SLURM cluster), and stand-in sbatch/srun/sinfo commands
    sshd         a private sshd on 127.0.0.1
    fixtures     session fixtures: ``reference_runs``
    hooks/       test-only behaviour, AE_DIST_TEST_HOOK=tests.helpers.hooks.<name>, imported by site/sitecustomize.py
    site/        sitecustomize.py, on the PYTHONPATH of children started with `commands.hook_env`
    programs/    small programs the tests run as processes (W&B sessions)

tests/ has no __init__.py on purpose: pytest then puts tests/ on sys.path, so ``from conftest import ...``
keeps working, and `tests.helpers` is found from the repository root (``python -m pytest`` run there,
or PYTHONPATH; the children get PYTHONPATH from `commands.clean_env`).
"""
