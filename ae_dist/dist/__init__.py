"""The processes of a job: who they are, how they meet, how they notice one of them is gone.

Owns the job's identity read once from the launcher's environment (`job`: SLURM and torchrun
ids, the host list, the rendezvous port; no torch, so the launcher uses it too), the process
group's one init and one teardown (`group`), the heartbeats that name a silent rank
(`liveness`), the stacks every live rank leaves when one went silent (`incidents`), and the
stop signals (`preemption`). May import `ae_dist.errors` and `ae_dist.config` only: it knows
nothing of run folders, data or models. Import its modules by name (nothing is re-exported, so
`ae_dist.dist.job` stays free of torch).
"""
