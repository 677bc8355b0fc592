"""Elastic SLURM jobs: one torchrun per node, c10d rendezvous on the first node; a lost node shrinks the job.

    python -m launch --nodes 4 --min-nodes 2 --gpus-per-node 8 --config configs/default.yaml   # submitit
    python -m launch --nodes 2 --min-nodes 1 --exclude node7 --max-node-failures 1 --config configs/digits.yaml
    AE_DIST_MIN_NODES=2 sbatch --nodes=2-4 --gpus-per-node=8 slurm/train-elastic.sbatch --config configs/default.yaml
    python -m launch.elastic node --min-nodes 2 -- --config configs/default.yaml     # what each node runs (srun)
    python -m launch.elastic settle --status 75 -- --config configs/default.yaml    # after srun: finish or requeue

The job is submitted with ``--nodes=MIN-MAX --no-kill``: SLURM keeps it when a node dies. On
every node, one `torchrun --nnodes=MIN:MAX` (torch's own elastic agent) starts the trainer
processes; when a node's processes die or its network goes, the agents on the other nodes
restart theirs (``--max-restarts``) at the smaller world size, and the trainer resumes from
the newest checkpoint with the same global batch and sample order. torchrun's
``--signals-to-handle`` (torch >= 2.10) passes SLURM's pre-timeout signal on to the trainer,
which checkpoints and exits 75; the job is then requeued. A rank that hangs is named by its
peers, who leave their stacks in ``run.dir/incidents/``; the step ends on every node, and the
job is requeued without the hung host (`launch.requeue`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ae_dist.config import Config, check_world_size, dump_yaml, load_config, resolve_paths
from ae_dist.dist import incidents
from ae_dist.dist.job import Job
from ae_dist.errors import UsageError, reporting
from ae_dist.run.folder import RunDir
from launch.node import check_torch, node_plan, run_node
from launch.request import make_executor
from launch.requeue import settle

if TYPE_CHECKING:
    import submitit

    from launch.request import Request


@dataclass(frozen=True)
class ElasticSpec:
    """The elastic part of a request (`Request.min_nodes` and what a failure may cost)."""

    min_nodes: int
    max_restarts: int = 3  # torchrun restarts of the worker group on each node, per start of the job
    max_node_failures: int = 2  # hosts a job may lose (and exclude) before a requeue is refused


class ElasticJob:
    """What submitit runs once per node of an elastic job: `run_node` on the resolved config."""

    def __init__(self, config: Config, spec: ElasticSpec, nproc: int):
        self.config_yaml, self.run_dir, self.spec, self.nproc = dump_yaml(config), config.run.dir, spec, nproc

    def __call__(self) -> dict[str, object]:
        import submitit

        paths = submitit.JobEnvironment().paths
        folder = incidents_of(self.run_dir)
        plan = node_plan(self.spec.min_nodes, self.nproc, self.spec.max_restarts,
                         incidents.failed_hosts(folder, Job.from_env().id))
        config_file = paths.folder / f"{plan.job}_{plan.host}_config.yaml"  # re-read by each torchrun restart
        config_file.write_text(self.config_yaml, encoding="utf-8")
        status = run_node(plan, ["--config", str(config_file)], Path(self.run_dir))
        if status:
            raise SystemExit(status)
        return {"status": "completed", "run_dir": self.run_dir, "host": plan.host}


def incidents_of(run_dir: str | Path) -> Path:
    return RunDir(Path(run_dir)).incidents


def executor(request: Request, spec: ElasticSpec, folder: Path, config: Config) -> submitit.AutoExecutor:
    """submitit's executor for an elastic job: one task per node, --nodes=MIN-MAX --no-kill, settled after srun."""
    per_node = replace(request, tasks_per_node=1, cpus_per_task=request.cpus_per_task and
                       request.cpus_per_task * request.ranks_per_node)
    made = make_executor(per_node, folder)
    # With --ntasks-per-node, SLURM (22.05) starts a --nodes=MIN-MAX job on MIN nodes even when MAX are idle;
    # submitit always writes it from tasks_per_node, and has no public way to leave it out.
    made._executor.parameters.pop("ntasks_per_node", None)
    extra = {**made._executor.parameters.get("additional_parameters", {}),
             "requeue": True, "nodes": f"{spec.min_nodes}-{request.nodes}", "no-kill": True}
    settle_line = shlex.join([sys.executable, "-m", "launch.elastic", "settle", "--run-dir", config.run.dir,
                              "--max-node-failures", str(spec.max_node_failures),
                              "--max-requeues", str(request.max_requeues)])
    made.update_parameters(slurm_additional_parameters=extra, slurm_teardown=[f"{settle_line} --status $?"],
                           slurm_srun_args=["--ntasks-per-node=1", "--no-kill", "--kill-on-bad-exit=0"])
    return made


def spec_of(request: Request, config: Config, sweeps: int, torch_here: bool = True) -> ElasticSpec | None:
    """The request's elastic fields as a checked spec; None without --min-nodes. Impossible requests end here."""
    if request.min_nodes is None:
        given = [name for name in ("max_restarts", "max_node_failures") if name in dict(request.origin)]
        if given:
            raise UsageError(f"{request.where(given[0])} is for elastic jobs", request.where(given[0]),
                             "add --min-nodes N (the fewest nodes to train on)")
        return None
    if request.min_nodes > request.nodes:
        raise UsageError(f"--min-nodes {request.min_nodes} is more than --nodes {request.nodes}",
                         request.where("min_nodes"), f"use at most {request.nodes} (--nodes is the most nodes the job uses)")
    if request.executor != "slurm" or sweeps:
        raise UsageError("elastic jobs (--min-nodes) are one SLURM job on several nodes",
                         "--sweep" if sweeps else request.where("executor"),
                         "use --executor slurm and one run per submission")
    if torch_here:
        check_torch()
    for nodes in range(request.min_nodes, request.nodes + 1):  # every world size the job may shrink to
        check_world_size(config, nodes * request.ranks_per_node)
    return ElasticSpec(request.min_nodes, request.max_restarts, request.max_node_failures)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog, f"see {self.prog} --help")


def trainer_config(trainer_args: list[str]) -> Config:
    """The config the trainer's own arguments (--config, key=value) make, its paths as the trainer resolves them."""
    config_path, rest = None, list(trainer_args)
    for at, arg in enumerate(rest):
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg == "--config" and at + 1 < len(rest):
            config_path = rest[at + 1]
    return resolve_paths(load_config(config_path, [a for a in rest if "=" in a and not a.startswith("-")]))


def trainer_run_dir(run_dir: str | None, trainer_args: list[str]) -> Path:
    """--run-dir, else the run folder the trainer's own arguments (--config, key=value) name."""
    return Path(run_dir) if run_dir else Path(trainer_config(trainer_args).run.dir)


@reporting
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m launch.elastic", description=__doc__, epilog="-- TRAINER ARGS: as for ae_dist.train",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("node", "settle"))
    parser.add_argument("--min-nodes", type=int, default=1, help="node: fewest nodes the job trains on (1)")
    parser.add_argument("--nproc-per-node", type=int, help="node: trainer processes per node (GPUs on the node, else 1)")
    parser.add_argument("--max-restarts", type=int, default=3, help="node: torchrun restarts of the workers (3)")
    parser.add_argument("--status", type=int, default=0, help="settle: the exit status of the job step (srun)")
    parser.add_argument("--run-dir", help="the run folder (default: from the trainer's arguments)")
    parser.add_argument("--max-node-failures", type=int, default=2, help="settle: hosts that may fail (2)")
    parser.add_argument("--max-requeues", type=int, help="settle: requeues allowed (default: no limit)")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, trainer_args = parser.parse_args(argv[:split]), argv[split + 1:]  # after --: the trainer's arguments
    run_dir = trainer_run_dir(args.run_dir, trainer_args)  # a bad config ends here, before torchrun starts
    if args.command == "settle":  # with the trainer's arguments, their train.epochs / max_steps decide too
        train = trainer_config(trainer_args).train if trainer_args else None
        return settle(args.status, run_dir, args.max_node_failures, args.max_requeues, train=train)
    skip = incidents.failed_hosts(RunDir(run_dir).incidents, Job.from_env().id)
    plan = node_plan(args.min_nodes, args.nproc_per_node, args.max_restarts, skip)
    return run_node(plan, trainer_args, run_dir)


if __name__ == "__main__":
    sys.exit(main())
