"""Submit ae-dist training to SLURM (or run it locally) through submitit; watch, stop and fetch it.

    python -m launch --nodes 2 --config configs/digits.yaml run.dir=runs/digits2
    python -m launch --nodes 2 --gpus-per-node 4 --partition gpu --time 4:00:00 --config configs/default.yaml
    python -m launch --executor local --tasks-per-node 2 --config configs/digits.yaml   # no SLURM needed
    python -m launch --sweep optim.lr=1e-3,3e-3 --array-parallelism 1 --config configs/digits.yaml run.dir=runs/lr
    python -m launch --sbatch gres=gpu:4 --sbatch mail-type=END --config configs/default.yaml   # any sbatch option
    python -m launch --nodes 4 --min-nodes 2 --config configs/digits.yaml    # elastic: a lost node shrinks the job
    python -m launch --cluster mycluster --config configs/default.yaml    # mycluster.yaml: see --cluster below
    python -m launch --dry-run --nodes 2 --config configs/digits.yaml    # the batch script; nothing submitted
    python -m launch --remote login.example.org --remote-dir ae-dist \\
        --remote-setup 'source ~/venvs/ae/bin/activate' --config configs/digits.yaml    # from a laptop
    python -m launch status [JOB_ID]          # newest job when no id; add the same --remote flags
    python -m launch logs [JOB_ID]            # follows until the job ends (--no-follow: print and stop)
    python -m launch cancel [JOB_ID]
    python -m launch fetch [JOB_ID] --to DIR  # metrics, pictures, weights, logs; no checkpoints
    python -m launch prepare --nodes 2 data.name=folder data.path=/shared/cells   # data preparation as a job
    python -m launch encode runs/digits --nodes 2 --wait   # ae_dist.encode (or score) as a job, same arguments

Setup lines (--setup, --remote-setup, and a profile's setup / remote_setup) are shell on
purpose, run as written; every other value is quoted where it reaches a shell or a batch
script, and names or paths holding control characters are refused.

Exit status: 0 submitted (with --wait: completed), 2 bad input or an impossible request,
1 a job that ended without completing (--wait), 75 a debug run stopped by a signal.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from ae_dist.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, UsageError, reporting
from ae_dist.run import lease
from launch import checks, jobs, plan, profiles, remote, request, shell
from launch.request import Request

SUBCOMMANDS = ("submit", "prepare", "status", "logs", "cancel", "fetch", "encode", "score")
INFER_COMMANDS = ("encode", "score")


class Parser(argparse.ArgumentParser):
    """Bad arguments are one `error:` line and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog, f"see {self.prog} --help")


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("from a laptop over SSH (a --cluster profile may set these)")
    group.add_argument("--cluster", help="cluster profile: NAME.yaml found first in ./configs/clusters, "
                                         "~/.config/ae-dist/clusters, the packaged profiles; or a path")
    request.add_flags(group, ssh=True)


def submit_parser() -> Parser:
    parser = Parser(prog="python -m launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    req = parser.add_argument_group("the request (flags win over a --cluster profile, whose keys are these names "
                                    "with _ for -)")
    request.add_flags(req, ssh=False)
    req.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                     help="one run per value (several --sweep: their product), submitted as one job array")
    req.add_argument("--wait", action="store_true", help="wait until the job ends; exit 0 only if every run completed")
    req.add_argument("--dry-run", action="store_true",
                     help="print the batch script (SLURM) or submitit's parameters; submit nothing, write nothing")
    req.add_argument("--print-config", action="store_true", help="print the resolved training config (YAML) and exit")
    req.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the record, for the remote side
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
        parser.add_argument("--until-stdin-closes", action="store_true", help=argparse.SUPPRESS)  # over SSH: see remote
    if command == "fetch":
        parser.add_argument("--to", required=True, help="local folder for the run folders ('-': a tar.gz on stdout)")
    add_remote_flags(parser)
    return parser


def request_of(args: argparse.Namespace) -> Request:
    """Flags, then the profile, then the defaults."""
    path, profile = profiles.load(args.cluster)
    return request.build(vars(args), profile, path)


def remote_of(req: Request) -> remote.Remote | None:
    if req.host is None:
        return None
    return remote.Remote(req.host, req.remote_dir, req.remote_setup, req.ssh_config)


def forwarded_args(req: Request, args: argparse.Namespace) -> list[str]:
    """The request and the submission's own flags, for the launcher on the login node."""
    return [*request.to_args(req), *(f"--sweep={item}" for item in args.sweep), *(["--wait"] if args.wait else [])]


def run_submit(argv: list[str], preparation: bool = False) -> int:
    """Submit a training (or, with ``preparation``, the data preparation `ae_dist.prepare` of the same config)."""
    from ae_dist.config import dump_yaml, load_config

    args = submit_parser().parse_intermixed_args(argv)
    req = request_of(args)
    config = load_config(args.config, args.overrides)
    if preparation:  # its submitit folder goes beside the prepared data, not into a run folder
        if args.sweep or req.host is not None or req.min_nodes:
            raise UsageError("prepare takes no --sweep, --remote or --min-nodes", "python -m launch prepare",
                             "submit the preparation from the cluster's login node")
        jobs_dir = Path(config.data.cache_dir).expanduser().absolute() / "jobs" / time.strftime("prepare-%Y%m%d-%H%M%S")
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, dir=str(jobs_dir)))
    if args.print_config:
        print(dump_yaml(config), end="")
        return 0
    sweeps = plan.parse_sweeps(args.sweep)
    target = remote_of(req)
    checks.check(req, scheduler_here=target is None and not args.dry_run)  # a dry run asks no scheduler
    runs = plan.plan_runs(config, sweeps, req.world_size)  # bad sweeps and batch sizes stop here, not on a login node
    from launch import elastic

    spec = elastic.spec_of(req, config, len(sweeps), torch_here=target is None)
    if target is not None and args.dry_run:
        print(f"dry run, nothing sent: the code and the resolved config would go to {target.host}:{target.work_dir}, "
              "and there:")
        print("  " + shell.command_line(["python3", "-m", "launch", "submit", "--config", "CONFIG",
                                         *forwarded_args(req, args)]))
        print("(the same command with --dry-run on the login node prints its batch script)")
        return 0
    if target is not None:
        record = remote.submit(target, dump_yaml(config), forwarded_args(req, args))
        print(f"on {target.host}:")
        jobs.describe(record, sys.stdout, then=shell.command_line(["python", "-m", "launch",
                                                                   *request.ssh_args(req, args.cluster)]))
        return 0
    for run in runs:  # a folder that a live run writes is refused here, before anything is submitted
        lease.check_free(Path(run.run.dir), run.run.lease_stale_s)
    from launch import submit  # submitit and torch: only where a job is submitted
    from launch.job import PrepareJob, TrainJob

    if args.dry_run:
        submit.preview(req, runs, spec)
        return 0
    record, submitted = submit.submit(req, runs, spec, PrepareJob if preparation else TrainJob)
    if args.json:
        print(record.to_json(), flush=True)
    else:
        jobs.describe(record, sys.stdout)
    if req.executor == "debug":
        results = [job.result() for job in submitted]
        return EXIT_PREEMPTED if any(r["status"] == "preempted" for r in results) else 0
    if args.wait:
        completed = submit.wait(record, submitted)
        jobs.status(record, sys.stderr if args.json else sys.stdout)
        return 0 if completed else 1
    return 0


def infer_parser(command: str) -> Parser:
    parser = Parser(prog=f"python -m launch {command}", description=f"""\
Submit python -m ae_dist.{command} RUN ... as a job: one task per rank, as training is submitted.

  python -m launch {command} runs/digits --nodes 2 --tasks-per-node 2 --wait
  python -m launch {command} runs/digits --executor local --tasks-per-node 2 --split test

Every argument that is not a request flag goes to ae_dist.{command} as it is (see its --help).""")
    req = parser.add_argument_group("the request")
    request.add_flags(req, ssh=False)
    req.add_argument("--wait", action="store_true", help="wait until the job ends; exit with its status")
    add_remote_flags(parser)  # --cluster profiles; --remote itself is refused below
    return parser


def run_infer(command: str, argv: list[str]) -> int:
    """encode / score on the cluster: checked here (request and arguments), one InferJob per task."""
    import importlib

    from ae_dist.infer import cli as infer_cli

    parser = infer_parser(command)
    args, forwarded = parser.parse_known_args(argv)
    req = request_of(args)
    if req.host is not None or req.min_nodes is not None:
        raise UsageError(f"launch {command} runs on this cluster's scheduler, not --remote or elastic", "--remote",
                         f"run python -m launch {command} on the login node, without --min-nodes")
    checks.check(req, scheduler_here=True)
    target = infer_cli.parse(importlib.import_module(f"ae_dist.{command}").parser(), forwarded)  # bad input: here
    from launch.job import InferJob

    folder = target.run_dir / "submitit"
    shell.check_folder(str(folder.resolve()), "RUN")
    executor = request.make_executor(req, folder.resolve())
    job = executor.submit(InferJob(command, forwarded))
    print(f"submitted {command} job {job.job_id} ({req.describe()}); logs in {folder}", flush=True)
    if not args.wait:
        return 0
    try:
        job.results()
    except Exception as err:  # noqa: BLE001 (submitit wraps the task's exit in its own errors)
        print(f"{command} job {job.job_id} ended without completing: {str(err).splitlines()[-1][:200]}", file=sys.stderr)
        return 1
    print(f"{command} job {job.job_id} done", flush=True)
    return 0


def run_job_command(command: str, argv: list[str]) -> int:
    args = job_parser(command).parse_args(argv)
    req = request_of(args)
    checks.check_ssh(req)
    target = remote_of(req)
    if target is not None:
        if command == "fetch":
            folders = remote.fetch(target, args.job_id, Path(args.to))
            print("\n".join(f"fetched {folder}" for folder in folders))
            return 0
        forwarded = [command, *([args.job_id] if args.job_id else [])]
        if command == "logs":
            forwarded += ["--task", str(args.task), *([] if args.follow else ["--no-follow"]), "--until-stdin-closes"]
        return remote.passthrough(target, forwarded)
    if getattr(args, "until_stdin_closes", False):
        threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
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


def _exit_when_stdin_closes() -> None:
    """On a login node, for a laptop's `logs --remote`: the SSH session's end (Ctrl-C there) closes stdin; go too."""
    try:
        while os.read(0, 4096):  # the raw descriptor: sys.stdin's buffer lock, held here, would break interpreter exit
            pass
    except OSError:
        return  # no stdin to watch
    os._exit(EXIT_INTERRUPTED)


@reporting
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "submit"
    try:
        if command in ("submit", "prepare"):
            return run_submit(argv, preparation=command == "prepare")
        if command in INFER_COMMANDS:
            return run_infer(command, argv)
        return run_job_command(command, argv)
    except KeyboardInterrupt:  # Ctrl-C while following logs or waiting: no traceback
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
