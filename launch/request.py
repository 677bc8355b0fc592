"""The cluster request: one frozen dataclass whose fields are at once the launcher's flags, the keys
of a cluster profile and submitit's parameters (lingua's StoolArgs is the model).

    python -m launch --nodes 2 --gpus-per-node 4 --partition gpu --sbatch gres=gpu:4 --config ...
    # configs/clusters/NAME.yaml says the same with the field names: nodes: 2, sbatch: {gres: "gpu:4"}

Each field carries its help line, its choices or least value, its flag (`--nodes` for `nodes`),
whether it is an SSH setting (used on the laptop, not sent to the login node) and the submitit
parameter it becomes. A value comes from its flag, else from the profile, else the default;
`Request.origin` remembers which, so an error names the flag, or the profile file and key.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field, fields
from typing import Any

from ae_dist.errors import UsageError
from launch import shell

EXECUTORS = ("slurm", "local", "debug")
# sbatch options the launcher writes itself: each has its own flag, or is not the user's to change.
RESERVED_SBATCH = {"nodes": "--nodes", "ntasks-per-node": "--tasks-per-node", "gpus-per-node": "--gpus-per-node",
                   "cpus-per-task": "--cpus-per-task", "mem": "--mem-gb", "time": "--time", "partition": "--partition",
                   "account": "--account", "qos": "--qos", "constraint": "--constraint", "job-name": "--job-name",
                   "signal": "--signal-delay-s", "array": "--array-parallelism", "requeue": "--max-requeues",
                   "no-requeue": "--max-requeues 0", "output": "(the launcher: logs go to run.dir/submitit)",
                   "error": "(the launcher)", "open-mode": "(the launcher)", "parsable": "(the launcher)",
                   "wrap": "(the launcher)"}


def option(default: Any, help: str, *, kind: type | str = str, flag: str = "", metavar: str | None = None,
           choices: tuple[str, ...] = (), least: int | None = None, submitit: str = "", ssh: bool = False) -> Any:
    """A request field: kind is int, float, str, "lines" (shell lines) or "sbatch" (KEY=VALUE pairs)."""
    return field(default=default, metadata={"help": help, "kind": kind, "flag": flag, "metavar": metavar,
                                            "choices": choices, "least": least, "submitit": submitit, "ssh": ssh})


@dataclass(frozen=True)
class Request:
    """What to ask the scheduler (and the login node) for; `world_size` ranks per run."""

    executor: str = option("slurm", "slurm, local (processes on this machine) or debug (inside this process)",
                           choices=EXECUTORS)
    nodes: int = option(1, "nodes per run", kind=int, least=1, submitit="nodes")
    gpus_per_node: int = option(0, "GPUs per node, one task (rank) per GPU; 0: CPU only", kind=int, least=0,
                                submitit="gpus_per_node")
    tasks_per_node: int | None = option(None, "trainer processes per node (default one per GPU, else 1)", kind=int,
                                        least=1, submitit="tasks_per_node")
    cpus_per_task: int | None = option(None, "CPU cores per task (sets the trainer's threads)", kind=int, least=1,
                                       submitit="cpus_per_task")
    mem_gb: float | None = option(None, "memory per node in GB", kind=float, submitit="mem_gb")
    time: str = option("60", "time limit: minutes, HH:MM:SS or D-HH:MM:SS", submitit="timeout_min")
    partition: str | None = option(None, "SLURM partition (checked against sinfo)", submitit="slurm_partition")
    account: str | None = option(None, "SLURM account", submitit="slurm_account")
    qos: str | None = option(None, "SLURM quality of service", submitit="slurm_qos")
    constraint: str | None = option(None, "SLURM node features (sbatch --constraint)", submitit="slurm_constraint")
    signal_delay_s: int = option(120, "seconds before the time limit that the checkpoint-and-requeue signal comes",
                                 kind=int, least=0, submitit="slurm_signal_delay_s")
    max_requeues: int = option(3, "requeues allowed after timeouts and preemptions", kind=int, least=0)
    array_parallelism: int | None = option(None, "sweep runs running at once (SLURM's job array throttle, %N)",
                                           kind=int, least=1, submitit="slurm_array_parallelism")
    sbatch: tuple[tuple[str, str | bool], ...] = option(
        (), "any other sbatch option, passed to SLURM as is (repeat the flag; in a profile, an sbatch: mapping): "
            "gres=gpu:4, exclude=node7, reservation=R, mail-type=END; a bare KEY is a switch (exclusive)",
        kind="sbatch", metavar="KEY=VALUE", submitit="slurm_additional_parameters")
    setup: tuple[str, ...] = option((), "shell lines run in the job before python (module loads, venv activation); "
                                        "they are shell and run as written", kind="lines", metavar="LINES",
                                    submitit="slurm_setup")
    job_name: str = option("ae-dist", "SLURM job name", submitit="name")
    host: str | None = option(None, "login node to submit from over SSH: a name from your ssh config, or user@host",
                              flag="--remote", metavar="HOST", ssh=True)
    remote_dir: str = option("ae-dist", "work folder on the login node (relative: below the home there)",
                             metavar="DIR", ssh=True)
    remote_setup: tuple[str, ...] = option((), "shell lines run on the login node before python (venv activation, "
                                               "modules); they are shell and run as written", kind="lines",
                                           metavar="LINES", ssh=True)
    ssh_config: str | None = option(None, "ssh config file instead of ~/.ssh/config", metavar="FILE", ssh=True)
    origin: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)  # (field, flag or profile key)

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def time_min(self) -> int:
        return parse_time(self.time, self.where("time"))

    def where(self, name: str) -> str:
        """Where the value of field ``name`` came from: its flag, the profile file and key, or the flag by default."""
        return dict(self.origin).get(name) or flag_of(FIELDS[name.split(".")[0]])

    def describe(self) -> str:
        parts = [f"{self.nodes} node(s) x {self.ranks_per_node} task(s)"]
        if self.gpus_per_node:
            parts.append(f"{self.gpus_per_node} GPU(s) per node")
        parts += [f"{name} {value}" for name, value in (("partition", self.partition), ("account", self.account),
                                                         ("qos", self.qos)) if value]
        if self.executor == "slurm":
            parts.append(f"time {self.time_min} min")
        return f"{self.executor}: " + ", ".join(parts)


FIELDS = {f.name: f for f in fields(Request) if "help" in f.metadata}


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def add_flags(group: argparse._ActionsContainer, ssh: bool) -> None:
    """The request's flags (or its SSH settings'), all defaulting to None: "not given, ask the profile"."""
    for f in FIELDS.values():
        if f.metadata["ssh"] != ssh:
            continue
        meta = f.metadata
        extra: dict[str, Any] = {"action": "append"} if meta["kind"] == "sbatch" else {}
        if meta["choices"]:
            extra["choices"] = meta["choices"]
        metavar = meta["metavar"] or ("N" if meta["kind"] is int else None)
        shown = f" (default {f.default})" if f.default not in (None, ()) else ""
        group.add_argument(flag_of(f), dest=f.name, metavar=metavar, help=(meta["help"] + shown).replace("%", "%%"),
                           **extra)


def parse_time(value: str | int, where: str = "--time") -> int:
    """Minutes from SLURM's formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    text = str(value)
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise UsageError(f"invalid time {text!r}", where, "give minutes, HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = first * 3600 + second * 60 + third
    else:  # MM[:SS]
        seconds = first * 60 + (second or 0)
    if seconds < 60:
        raise UsageError(f"time limit {text!r} is under a minute", where, "give at least 1 (minute)")
    return -(-seconds // 60)


def convert(f: dataclasses.Field, raw: Any) -> Any:
    """A flag's text or a profile's YAML value as the field's type; ValueError says what was expected."""
    kind = f.metadata["kind"]
    if kind is int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError("give an integer")
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"give an integer, not {raw!r}") from None
    if kind is float:
        try:
            number = float(raw) if not isinstance(raw, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"give a number, not {raw!r}")
        return number
    if kind == "lines":
        if isinstance(raw, str):  # lines end at "\n" only: a stray CR stays in its line, to be refused there
            return tuple(line for line in raw.split("\n") if line.strip())
        if isinstance(raw, list) and all(isinstance(line, str) for line in raw):
            return tuple(line for line in raw if line.strip())
        raise ValueError("give shell lines: one string, or a list of strings")
    if kind == "sbatch":
        return _sbatch_pairs(raw)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise ValueError("give a string")
    return str(raw)


def _sbatch_pairs(raw: Any) -> tuple[tuple[str, str | bool], ...]:
    """`--sbatch KEY=VALUE` items (a list of strings) or a profile's `sbatch:` mapping, as (key, value) pairs."""
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        items = [(item.partition("=")[0], item.partition("=")[2] if "=" in item else True) for item in raw]
    else:
        raise ValueError("give a mapping of sbatch options, e.g. sbatch: {gres: 'gpu:4'}")
    pairs = []
    for key, value in items:
        if isinstance(value, bool) and value is not True or not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"give a string, a number or true for {key}")
        pairs.append((str(key).strip().replace("_", "-"), value if value is True else str(value)))
    return tuple(pairs)


def build(flags: dict[str, Any], profile: dict[str, Any], profile_path: str = "") -> Request:
    """Flags win over the profile, which wins over the defaults; `--sbatch` items add to the profile's, key by key."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    problems = []
    for name, f in FIELDS.items():
        sources = [(profile.get(name), f"{profile_path}: {name}"), (flags.get(name), flag_of(f))]
        for raw, where in sources:
            if raw is None:
                continue
            try:
                value = convert(f, raw)
            except ValueError as err:
                problems.append((f"wrong value ({err})", where, f"see python -m launch --help for {flag_of(f)}"))
                continue
            if f.metadata["kind"] == "sbatch":  # key by key: the flag's items over the profile's
                origin.update({f"sbatch.{key}": f"{where} {key}" for key, _ in value})
                value = tuple({**dict(values.get(name, ())), **dict(value)}.items())
            values[name], origin[name] = value, where
    if problems:
        raise UsageError.many(problems)
    return Request(**values, origin=tuple(origin.items()))


def check(request: Request, scheduler_here: bool = True) -> None:
    """Impossible or unsafe requests end here, before anything is submitted (or shipped to a login node)."""
    check_ssh(request)
    for name in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "signal_delay_s", "max_requeues",
                 "array_parallelism"):
        value, least = getattr(request, name), FIELDS[name].metadata["least"]
        if value is not None and value < least:
            raise UsageError(f"{flag_of(FIELDS[name])} is {value}", request.where(name), f"use an integer >= {least}")
    if request.executor not in EXECUTORS:
        raise UsageError(f"unknown executor {request.executor!r}", request.where("executor"),
                         f"use one of {' | '.join(EXECUTORS)}")
    if request.mem_gb is not None and request.mem_gb <= 0:
        raise UsageError(f"--mem-gb is {request.mem_gb:g}", request.where("mem_gb"), "use a number > 0")
    request.time_min  # noqa: B018  (parses, or says why not)
    for name in ("partition", "account", "qos", "constraint", "job_name"):
        if getattr(request, name) is not None:
            shell.check_sbatch_value(getattr(request, name), request.where(name))
    for key, value in request.sbatch:
        where = request.where(f"sbatch.{key}")
        shell.check_sbatch_key(key, where)
        if key in RESERVED_SBATCH:
            raise UsageError(f"sbatch option {key} is the launcher's own", where, f"use {RESERVED_SBATCH[key]}")
        if value is not True:
            shell.check_sbatch_value(value, where)
    shell.check_lines(request.setup, request.where("setup"))
    _check_shape(request)
    if request.executor == "slurm" and scheduler_here:
        _check_slurm(request)


def check_ssh(request: Request) -> None:
    if request.host is not None:
        shell.check_host(request.host, request.where("host"))
    for name in ("remote_dir", "ssh_config"):
        if getattr(request, name) is not None:
            shell.check_name(getattr(request, name), request.where(name))
    shell.check_lines(request.remote_setup, request.where("remote_setup"))


def _check_shape(request: Request) -> None:
    if request.gpus_per_node and request.ranks_per_node != request.gpus_per_node:
        raise UsageError(f"{request.tasks_per_node} tasks per node for {request.gpus_per_node} GPUs per node",
                         request.where("tasks_per_node"), "leave it out: one task per GPU")
    if request.executor == "local" and request.nodes != 1:
        raise UsageError(f"the local executor runs on this machine only, not on {request.nodes} nodes",
                         request.where("nodes"), "use --nodes 1, or --executor slurm")
    if request.executor == "debug" and request.world_size != 1:
        raise UsageError("the debug executor runs one process inside this one", request.where("tasks_per_node"),
                         "use --executor local for several processes")


def _check_slurm(request: Request) -> None:
    if not shutil.which("sbatch"):
        raise UsageError("no sbatch on this machine and no remote host", "--remote",
                         "submit from a login node, pass --remote HOST (or a --cluster profile with a host), "
                         "or use --executor local")
    if request.partition is None:
        return
    result = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    if result.returncode:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"sinfo failed ({reason})", request.where("partition"), "check that SLURM answers here (sinfo)")
    partitions = sorted(set(result.stdout.split()))
    if request.partition not in partitions:
        raise UsageError(f"partition {request.partition!r} is not listed by sinfo", request.where("partition"),
                         f"use one of {', '.join(partitions) or '(none)'}")


def submitit_parameters(request: Request) -> dict[str, Any]:
    """`AutoExecutor.update_parameters` arguments: each field with a submitit name, when set."""
    params: dict[str, Any] = {"stderr_to_stdout": True, "tasks_per_node": request.ranks_per_node,
                              "slurm_additional_parameters": {"requeue": True}}
    for name, f in FIELDS.items():
        value = getattr(request, name)
        if not f.metadata["submitit"] or value is None or value == () or name == "gpus_per_node" and not value:
            continue
        if name == "time":
            value = request.time_min
        elif name == "sbatch":
            value = {"requeue": True, **dict(value)}
        elif name == "setup":
            value = list(value)
        elif name == "tasks_per_node":
            value = request.ranks_per_node
        params[f.metadata["submitit"]] = value
    return params


def to_args(request: Request) -> list[str]:
    """The request's scheduler fields as flags again (those that differ from the default), for the login node."""
    out = []
    for name, f in FIELDS.items():
        value = getattr(request, name)
        if f.metadata["ssh"] or value == f.default:
            continue
        if name == "sbatch":
            out += [f"--sbatch={key}" if item is True else f"--sbatch={key}={item}" for key, item in value]
        elif name == "setup":
            out.append(f"--setup={chr(10).join(value)}")
        else:
            out.append(f"{flag_of(f)}={value}")
    return out


def ssh_args(request: Request, cluster: str | None) -> list[str]:
    """The flags that reach the same login node again: the profile, and the SSH flags given by hand."""
    out = ["--cluster", cluster] if cluster else []
    for name, f in FIELDS.items():
        value = getattr(request, name)
        by_hand = dict(request.origin).get(name) == flag_of(f)
        if f.metadata["ssh"] and value not in (None, ()) and (by_hand or not cluster and value != f.default):
            value = "\n".join(value) if isinstance(value, tuple) else value
            out += [f"{flag_of(f)}={value}"] if value.startswith("-") else [flag_of(f), value]
    return out
