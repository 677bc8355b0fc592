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
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin, get_type_hints

from ae_dist.errors import UsageError

if TYPE_CHECKING:
    import submitit

EXECUTORS = ("slurm", "local", "debug")
def option(default: Any, help: str, *, flag: str = "", metavar: str | None = None, choices: tuple[str, ...] = (),
           least: int | None = None, submitit: str = "", ssh: bool = False) -> Any:
    """A request field; its type annotation says how a flag's text or a profile's value converts (`kind`)."""
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar, "choices": choices,
                                            "least": least, "submitit": submitit, "ssh": ssh})


@dataclass(frozen=True)
class Request:
    """What to ask the scheduler (and the login node) for; `world_size` ranks per run."""

    executor: str = option("slurm", "slurm, local (processes on this machine) or debug (inside this process)",
                           choices=EXECUTORS)
    nodes: int = option(1, "nodes per run", least=1, submitit="nodes")
    gpus_per_node: int = option(0, "GPUs per node, one task (rank) per GPU; 0: CPU only", least=0, submitit="gpus_per_node")
    tasks_per_node: int | None = option(None, "trainer processes per node (default one per GPU, else 1)", least=1,
                                        submitit="tasks_per_node")
    cpus_per_task: int | None = option(None, "CPU cores per task (sets the trainer's threads)", least=1,
                                       submitit="cpus_per_task")
    mem_gb: float | None = option(None, "memory per node in GB", submitit="mem_gb")
    time: str = option("60", "time limit: minutes, HH:MM:SS or D-HH:MM:SS", submitit="timeout_min")
    partition: str | None = option(None, "SLURM partition (checked against sinfo)", submitit="slurm_partition")
    account: str | None = option(None, "SLURM account", submitit="slurm_account")
    qos: str | None = option(None, "SLURM quality of service", submitit="slurm_qos")
    constraint: str | None = option(None, "SLURM node features (sbatch --constraint)", submitit="slurm_constraint")
    signal_delay_s: int = option(120, "seconds before the time limit that the checkpoint-and-requeue signal comes",
                                 least=0, submitit="slurm_signal_delay_s")
    max_requeues: int = option(3, "requeues allowed after timeouts and preemptions", least=0)
    array_parallelism: int | None = option(None, "sweep runs running at once (SLURM's job array throttle, %N)",
                                           least=1, submitit="slurm_array_parallelism")
    exclude: str | None = option(None, "hosts the job never uses, comma-separated (an elastic job adds the hosts "
                                       "that fail)", metavar="HOSTS", submitit="slurm_exclude")
    min_nodes: int | None = option(None, "elastic job: the fewest nodes to train on; submits --nodes=MIN-MAX "
                                         "--no-kill, one torchrun per node, and a lost node shrinks the job", least=1)
    max_restarts: int = option(3, "elastic job: torchrun restarts of the workers on each node", least=0)
    max_node_failures: int = option(2, "elastic job: hosts that may fail (each excluded on requeue) before a "
                                       "requeue is refused", least=0)
    sbatch: tuple[tuple[str, str | bool], ...] = option(
        (), "any other sbatch option, passed to SLURM as is (repeat the flag; in a profile, an sbatch: mapping): "
            "gres=gpu:4, reservation=R, mail-type=END; a bare KEY is a switch (exclusive)",
        metavar="KEY=VALUE", submitit="slurm_additional_parameters")
    setup: tuple[str, ...] = option((), "shell lines run in the job before python (module loads, venv activation); "
                                        "they are shell and run as written", metavar="LINES", submitit="slurm_setup")
    job_name: str = option("ae-dist", "SLURM job name", submitit="name")
    host: str | None = option(None, "login node to submit from over SSH: a name from your ssh config, or user@host",
                              flag="--remote", metavar="HOST", ssh=True)
    remote_dir: str = option("ae-dist", "work folder on the login node (relative: below the home there)",
                             metavar="DIR", ssh=True)
    remote_setup: tuple[str, ...] = option((), "shell lines run on the login node before python (venv activation, "
                                               "modules); they are shell and run as written", metavar="LINES", ssh=True)
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
        if self.min_nodes is not None:
            parts.append(f"elastic: {self.min_nodes}-{self.nodes} nodes")
        return f"{self.executor}: " + ", ".join(parts)


FIELDS = {f.name: f for f in fields(Request) if "help" in f.metadata}


def _kind(hint: Any) -> type | str:
    """int, float, str, "lines" (a tuple of shell lines) or "sbatch" (a tuple of KEY, VALUE pairs)."""
    base = next(arg for arg in get_args(hint) if arg is not type(None)) if isinstance(hint, types.UnionType) else hint
    if get_origin(base) is tuple:
        return "sbatch" if get_origin(get_args(base)[0]) is tuple else "lines"
    return base


KINDS = {name: _kind(hint) for name, hint in get_type_hints(Request).items() if name in FIELDS}


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def add_flags(group: argparse._ActionsContainer, ssh: bool) -> None:
    """The request's flags (or its SSH settings'), all defaulting to None: "not given, ask the profile"."""
    for f in FIELDS.values():
        if f.metadata["ssh"] != ssh:
            continue
        meta = f.metadata
        extra: dict[str, Any] = {"action": "append"} if KINDS[f.name] == "sbatch" else {}
        if meta["choices"]:
            extra["choices"] = meta["choices"]
        metavar = meta["metavar"] or ("N" if KINDS[f.name] is int else None)
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
    kind = KINDS[f.name]
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
            if KINDS[name] == "sbatch":  # key by key: the flag's items over the profile's
                origin.update({f"sbatch.{key}": f"{where} {key}" for key, _ in value})
                value = tuple({**dict(values.get(name, ())), **dict(value)}.items())
            values[name], origin[name] = value, where
    if problems:
        raise UsageError.many(problems)
    return Request(**values, origin=tuple(origin.items()))


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


def make_executor(request: Request, folder: Path) -> submitit.AutoExecutor:
    """submitit's executor for ``request`` (it makes no folder until a job is submitted)."""
    import submitit  # not for --help and request parsing

    executor = submitit.AutoExecutor(folder=folder, cluster=request.executor, slurm_max_num_timeout=request.max_requeues)
    executor.update_parameters(**submitit_parameters(request))
    return executor
