"""Submit ae-dist training to SLURM (or run it locally) through submitit; watch, stop and fetch it.

    python -m launch --nodes 2 --config configs/digits.yaml run.dir=runs/digits2
    python -m launch --nodes 2 --gpus-per-node 4 --partition gpu --time 4:00:00 --config configs/default.yaml
    python -m launch --executor local --tasks-per-node 2 --config configs/digits.yaml   # no SLURM needed
    python -m launch --sweep optim.lr=1e-3,3e-3 --config configs/digits.yaml run.dir=runs/lr   # one job array
    python -m launch --nodes 4 --min-nodes 2 --config configs/digits.yaml    # elastic: a lost node shrinks the job
    python -m launch --cluster mycluster --config configs/default.yaml    # configs/clusters/mycluster.yaml
    python -m launch --remote login.example.org --remote-dir ae-dist \\
        --remote-setup 'source ~/venvs/ae/bin/activate' --config configs/digits.yaml    # from a laptop
    python -m launch status [JOB_ID]          # newest job when no id; add the same --remote flags
    python -m launch logs [JOB_ID]            # follows until the job ends (--no-follow: print and stop)
    python -m launch cancel [JOB_ID]
    python -m launch fetch [JOB_ID] --to DIR  # metrics, pictures, weights, logs; no checkpoints

Exit status: 0 submitted (with --wait: completed), 2 bad input or an impossible request,
1 a job that ended without completing (--wait), 75 a debug run stopped by a signal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ae_dist.errors import EXIT_PREEMPTED, UsageError, reporting
from launch import elastic, jobs, profiles, remote

if TYPE_CHECKING:
    from launch.submit import Request

SUBCOMMANDS = ("submit", "status", "logs", "cancel", "fetch")
REMOTE_KEYS = ("host", "remote_dir", "remote_setup", "ssh_config")
# Request fields a profile or a flag may set, and their defaults when neither does.
DEFAULTS: dict[str, Any] = {"executor": "slurm", "nodes": 1, "gpus_per_node": 0, "tasks_per_node": None,
                            "cpus_per_task": None, "mem_gb": None, "time": "60", "partition": None, "account": None,
                            "qos": None, "constraint": None, "signal_delay_s": 120, "max_requeues": 3, "setup": None}


class Parser(argparse.ArgumentParser):
    """Bad arguments are one `error:` line and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog, f"see {self.prog} --help")


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("from a laptop over SSH (a --cluster profile may set these)")
    group.add_argument("--cluster", help="cluster profile: configs/clusters/NAME.yaml, or a path")
    group.add_argument("--remote", dest="host", metavar="HOST", help="login node (as ssh knows it: your ssh config applies)")
    group.add_argument("--remote-dir", metavar="DIR", help="work folder on the login node (default ~/ae-dist)")
    group.add_argument("--remote-setup", metavar="LINES", help="shell lines run there before python, e.g. a venv activation")
    group.add_argument("--ssh-config", metavar="FILE", help="ssh config file instead of ~/.ssh/config")


def submit_parser() -> Parser:
    parser = Parser(prog="python -m launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    req = parser.add_argument_group("the request (flags win over a --cluster profile)")
    req.add_argument("--executor", choices=profiles.EXECUTORS,
                     help="slurm (default), local (processes here), debug (in this process)")
    req.add_argument("--nodes", type=int, help="nodes (default 1)")
    req.add_argument("--gpus-per-node", type=int, help="GPUs per node; one task per GPU (default 0: CPU)")
    req.add_argument("--tasks-per-node", type=int, help="trainer processes per node without GPUs (default 1)")
    req.add_argument("--cpus-per-task", type=int, help="CPU cores per task (sets the trainer's threads)")
    req.add_argument("--mem-gb", type=float, help="memory per node in GB")
    req.add_argument("--time", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS (default 60)")
    for name in ("partition", "account", "qos", "constraint"):
        req.add_argument(f"--{name}", help=f"SLURM {name}")
    req.add_argument("--signal-delay-s", type=int, help="checkpoint-and-requeue signal this long before the limit (120)")
    req.add_argument("--max-requeues", type=int, help="requeues allowed after timeouts (default 3)")
    req.add_argument("--setup", help="shell lines run in the job before python (module loads, venv)")
    req.add_argument("--job-name", default="ae-dist", help="SLURM job name")
    req.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                     help="one run per value (several --sweep: their product), submitted as one job array")
    req.add_argument("--wait", action="store_true", help="wait until the job ends; exit 0 only if every run completed")
    req.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the record, for the remote side
    elastic.add_flags(parser)
    add_remote_flags(parser)
    parser.add_argument("--config", help="YAML experiment (default: configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, as for ae_dist.train")
    return parser


def job_parser(command: str) -> Parser:
    parser = Parser(prog=f"python -m launch {command}", description=f"{command} a submitted job (default: the newest)")
    parser.add_argument("job_id", nargs="?", help="job id (default: the newest job submitted from here)")
    if command == "logs":
        parser.add_argument("--task", type=int, default=0, help="which rank's log (default 0)")
        parser.add_argument("--no-follow", dest="follow", action="store_false", help="print what is there and stop")
    if command == "fetch":
        parser.add_argument("--to", required=True, help="local folder for the run folders ('-': a tar.gz on stdout)")
    add_remote_flags(parser)
    return parser


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Flags, then the profile, then the defaults."""
    profile = profiles.load_profile(args.cluster)
    merged = {}
    for key in (*DEFAULTS, *REMOTE_KEYS):
        flag = getattr(args, key, None)
        merged[key] = flag if flag is not None else profile.get(key, DEFAULTS.get(key))
    return merged


def remote_of(values: dict[str, Any]) -> remote.Remote | None:
    if not values["host"]:
        return None
    return remote.Remote(values["host"], values["remote_dir"] or "ae-dist",
                         tuple(profiles.shell_lines(values["remote_setup"])), values["ssh_config"])


def build_request(values: dict[str, Any], job_name: str) -> Request:
    from launch import submit  # torch and submitit: only where a job is submitted

    gpus = values["gpus_per_node"] or 0
    return submit.Request(
        executor=values["executor"], nodes=values["nodes"], tasks_per_node=values["tasks_per_node"] or max(gpus, 1),
        gpus_per_node=gpus, cpus_per_task=values["cpus_per_task"], mem_gb=values["mem_gb"],
        time_min=submit.parse_time(values["time"]), partition=values["partition"], account=values["account"],
        qos=values["qos"], constraint=values["constraint"], signal_delay_s=values["signal_delay_s"],
        max_requeues=values["max_requeues"], setup=tuple(profiles.shell_lines(values["setup"])), job_name=job_name)


def request_args(values: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The request as flags again, for the launcher on the login node."""
    out = []
    for key in DEFAULTS:
        value = values[key]
        if value is not None:
            value = "\n".join(profiles.shell_lines(value)) if key == "setup" else value
            out += [f"--{key.replace('_', '-')}", str(value)]
    out += ["--job-name", args.job_name, *(f"--sweep={item}" for item in args.sweep)]
    return out + (["--wait"] if args.wait else [])


def run_submit(argv: list[str]) -> int:
    from ae_dist.config import dump_yaml, load_config
    from launch import submit

    args = submit_parser().parse_intermixed_args(argv)
    values = settings(args)
    config = load_config(args.config, args.overrides)
    sweeps = submit.parse_sweeps(args.sweep)
    request = build_request(values, args.job_name)
    target = remote_of(values)
    submit.check_request(request, scheduler_here=target is None)
    spec = elastic.spec_of(args, request, config, len(sweeps), torch_here=target is None)
    if target is not None:
        submit.plan_runs(config, sweeps, request.world_size)  # bad sweeps and batch sizes stop here, not there
        record = remote.submit(target, dump_yaml(config), request_args(values, args) + elastic.flags_of(spec))
        flags = f"--remote {target.host} --remote-dir {target.work_dir}" + (
            f" --ssh-config {target.ssh_config}" if target.ssh_config else "")
        print(f"on {target.host}:")
        submit.describe(record, sys.stdout, then=f"python -m launch {flags}")
        return 0
    runs = submit.plan_runs(config, sweeps, request.world_size)
    record, submitted = submit.submit(request, runs, spec)
    if args.json:
        print(record.to_json(), flush=True)
    else:
        submit.describe(record, sys.stdout)
    if request.executor == "debug":
        results = [job.result() for job in submitted]
        return EXIT_PREEMPTED if any(r["status"] == "preempted" for r in results) else 0
    if args.wait:
        completed = submit.wait(record, submitted)
        jobs.status(record, sys.stderr if args.json else sys.stdout)
        return 0 if completed else 1
    return 0


def run_job_command(command: str, argv: list[str]) -> int:
    args = job_parser(command).parse_args(argv)
    target = remote_of(settings(args))
    if target is not None:
        if command == "fetch":
            folders = remote.fetch(target, args.job_id, Path(args.to))
            print("\n".join(f"fetched {folder}" for folder in folders))
            return 0
        forwarded = [command, *([args.job_id] if args.job_id else [])]
        if command == "logs":
            forwarded += ["--task", str(args.task), *([] if args.follow else ["--no-follow"])]
        return remote.passthrough(target, forwarded)
    record = jobs.find(args.job_id)
    if command == "status":
        jobs.status(record)
    elif command == "logs":
        jobs.logs(record, args.task, args.follow)
    elif command == "cancel":
        print(jobs.cancel(record))
    elif args.to == "-":
        jobs.pack(record, sys.stdout.buffer)
    else:
        for folder in jobs.fetch(record, Path(args.to)):
            print(f"fetched {folder}")
    return 0


@reporting
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "submit"
    if command == "submit":
        return run_submit(argv)
    return run_job_command(command, argv)


if __name__ == "__main__":
    sys.exit(main())
