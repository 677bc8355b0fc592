"""Submitted jobs: a registry in the work folder, and status / logs / cancel / fetch on it.

Every submission appends one JSON line to `runs/jobs.jsonl` under the folder it was made
from (on a login node: the `--remote-dir`). A line names the job, its executor, and per
run (one, or one per sweep task) the run folder, the W&B run id and the log of each task,
so the subcommands work from a job id alone, or from nothing (the newest job).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import yaml

from ae_dist.dist import incidents
from ae_dist.errors import UsageError
from ae_dist.run import completion
from ae_dist.run.folder import RunDir
from ae_dist.run.metrics import read_metrics
from launch.states import ENDED, launcher_state, state_of

REGISTRY = Path("runs") / "jobs.jsonl"
FOLLOW_INTERVAL_S = 1.0


@dataclass
class Run:
    job_id: str  # the scheduler's id of this run ("123", or "123_0" for a sweep task)
    run_dir: str
    wandb_run_id: str
    logs: list[str]  # one per task (rank)


@dataclass
class Record:
    job_id: str
    executor: str
    submitted: str
    host: str
    request: str  # what was asked of the scheduler, in words
    tasks: int  # ranks per run
    wandb_project: str
    wandb_group: str
    wandb_mode: str
    runs: list[Run] = field(default_factory=list)

    @classmethod
    def from_json(cls, line: str) -> Record:
        data = json.loads(line)
        data["runs"] = [Run(**run) for run in data["runs"]]
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def remember(record: Record, registry: Path = REGISTRY) -> None:
    """Append the record as one line, in one write: launchers running side by side never interleave."""
    registry.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(registry, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        torn = os.fstat(fd).st_size and not _ends_with_newline(registry)
        os.write(fd, ("\n" if torn else "").encode() + (record.to_json() + "\n").encode())
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def read_registry(registry: Path = REGISTRY) -> list[Record]:
    """Every intact record, oldest first; damaged lines (a launcher killed mid-write) are skipped with one warning."""
    if not registry.exists():
        return []
    records, damaged = [], []
    for number, line in enumerate(registry.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(Record.from_json(line))
        except (ValueError, TypeError, KeyError, AttributeError):
            damaged.append(str(number))
    if damaged:
        print(f"warning: skipped {len(damaged)} damaged line(s) of {registry} (line {', '.join(damaged[:5])}"
              f"{', ...' if len(damaged) > 5 else ''}); the other jobs are intact", file=sys.stderr)
    return records


def find(job_id: str | None, registry: Path = REGISTRY) -> Record:
    """The record of ``job_id`` (a job or one of its sweep tasks), or the newest one."""
    for record in reversed(read_registry(registry)):
        if job_id is None or job_id == record.job_id or any(run.job_id == job_id for run in record.runs):
            return record
    where = f"{Path.cwd() / registry}"
    if job_id is None:
        raise UsageError("no job submitted from this folder yet", where, "submit one with python -m launch")
    raise UsageError(f"job {job_id} was not submitted from this folder", where,
                     "run this from the folder you submitted from (with --remote, give the same --remote-dir)")


# -------------------------------------------------------------------------------------------
# States
# -------------------------------------------------------------------------------------------

def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def sacct_rows(job_id: str) -> list[dict[str, str]]:
    """Every instance of the job (requeued ones too, as REQUEUED), oldest first."""
    fields = ("JobID", "State", "ExitCode", "Elapsed", "NodeList")
    out = _run(["sacct", "-j", job_id, "-X", "-D", "-n", "-P", "-o", ",".join(fields)])
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    for row in rows:
        row["State"] = row["State"].split()[0] if row["State"] else "UNKNOWN"  # "CANCELLED by 0"
    return rows


def _controller_alive(pid: str) -> bool:
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return b"submitit" in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def run_complete(run_dir: str) -> bool:
    """The trainer's own answer (`ae_dist.run.completion`): its wrap-up recorded the run complete."""
    return completion.is_complete(RunDir(Path(run_dir)))


def states(record: Record) -> dict[str, str]:
    """Current state of each run of the job, one of `launch.states.STATES`: PENDING, RUNNING, COMPLETED, ..."""
    if record.executor != "slurm":
        alive = record.executor == "local" and _controller_alive(record.job_id)
        return {run.job_id: "RUNNING" if alive else "COMPLETED" if run_complete(run.run_dir) else "ENDED"
                for run in record.runs}
    queued = {}
    for line in _run(["squeue", "-h", "-j", record.job_id, "-o", "%i %T"]).splitlines():
        job, _, state = line.partition(" ")
        queued[job] = launcher_state(state)
    last = {row["JobID"]: launcher_state(row["State"]) for row in sacct_rows(record.job_id)}  # the newest instance
    return {run.job_id: state_of(run.job_id, queued) or state_of(run.job_id, last) or "UNKNOWN" for run in record.runs}


def finished(record: Record) -> bool:
    return all(state in ENDED for state in states(record).values())


def progress(run_dir: str) -> str:
    """One line on how far the run folder has come."""
    folder = RunDir(Path(run_dir))
    epochs = "?"
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
        epochs = yaml.safe_load(folder.config.read_text(encoding="utf-8"))["train"]["epochs"]
    done = [r for r in read_metrics(folder.metrics) if r.get("kind") == "epoch"]
    if not done:
        return "no epoch finished yet"
    last = done[-1]
    line = f"epoch {last['epoch']}/{epochs}, step {last['step']}, test loss {last['test_loss']:.4f}"
    return line + (", complete (model.pt written)" if run_complete(run_dir) else "")


def status(record: Record, out: IO[str] | None = None) -> None:
    out = out or sys.stdout  # looked up now: sys.stdout may have been replaced since import
    now = states(record)
    overall = "COMPLETED" if all(s == "COMPLETED" for s in now.values()) else ",".join(sorted(set(now.values())))
    print(f"job {record.job_id} ({record.request}; submitted {record.submitted} on {record.host}): {overall}",
          file=out)
    if record.executor == "slurm":
        for row in sacct_rows(record.job_id):
            print(f"  sacct {row['JobID']:<12} {row['State']:<11} exit {row['ExitCode']:<5} "
                  f"elapsed {row['Elapsed']} on {row['NodeList']}", file=out)
    for run in record.runs:
        print(f"  run {run.job_id}: {now[run.job_id]}; {run.run_dir}: {progress(run.run_dir)}; "
              f"W&B {record.wandb_project}/{run.wandb_run_id}", file=out)
        where = RunDir(Path(run.run_dir)).read_info()  # the trainer stores its W&B URL or sync command
        if where.get("wandb_url") or where.get("wandb_sync"):
            print(f"    W&B {where.get('wandb_url') or where.get('wandb_sync')}", file=out)
        for line in incidents.summary(RunDir(Path(run.run_dir)).incidents):  # a rank that went silent, hosts excluded
            print(f"    {line}", file=out)


def describe(record: Record, out: IO[str], then: str = "python -m launch") -> None:
    """What was submitted and where to look: job id, run folders, W&B runs, logs, the next command (``then``:
    the launcher and its SSH flags, shell-quoted)."""
    kind = "job array" if len(record.runs) > 1 else "job"
    print(f"submitted {kind} {record.job_id} ({record.request})", file=out)
    group = f", group {record.wandb_group}" if record.wandb_group else ""
    for run in record.runs:
        print(f"  run {run.job_id}", file=out)
        print(f"    run folder  {run.run_dir}", file=out)
        print(f"    W&B run     {record.wandb_project}/{run.wandb_run_id} ({record.wandb_mode}{group})", file=out)
        print("    logs        " + ", ".join(f"{log} (rank {rank})" for rank, log in enumerate(run.logs)), file=out)
    job = shlex.quote(record.job_id)  # pasteable as printed: `then` is shell-quoted too
    print(f"  next          {then} status {job}    # likewise logs, cancel; fetch {job} --to DIR", file=out)
    out.flush()



# -------------------------------------------------------------------------------------------
# Logs, cancel, fetch
# -------------------------------------------------------------------------------------------

def logs(record: Record, task: int = 0, follow: bool = True, out: IO[str] | None = None) -> None:
    """Print each run's log of task ``task``; with ``follow``, keep printing until the job ends."""
    out = out or sys.stdout
    paths = []
    for run in record.runs:
        if not 0 <= task < len(run.logs):
            raise UsageError(f"job {record.job_id} has tasks 0-{len(run.logs) - 1}", "--task", "pick one of those")
        paths.append(Path(run.logs[task]))
    prefix = {p: f"[{run.job_id}] " if len(paths) > 1 else "" for p, run in zip(paths, record.runs)}
    offsets = dict.fromkeys(paths, 0)
    while True:
        ended = not follow or finished(record)  # decided before the last read: nothing written after is lost
        for path in paths:
            offsets[path] = _print_new(path, offsets[path], prefix[path], out, whole_lines=not ended)
        if ended:
            return
        time.sleep(FOLLOW_INTERVAL_S)


def _print_new(path: Path, offset: int, prefix: str, out: IO[str], whole_lines: bool) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return offset
    complete = data[:data.rfind(b"\n") + 1] if whole_lines else data  # a torn line waits for the next read
    for line in complete.decode("utf-8", "replace").splitlines():
        print(prefix + line, file=out, flush=True)
    return offset + len(complete)


def cancel(record: Record) -> str:
    """scancel for SLURM; SIGTERM to the local controller (the trainer checkpoints, then stops). A job whose
    runs have all ended is left alone, and the line says so, with their states."""
    now = states(record)
    if all(state in ENDED for state in now.values()):
        return f"job {record.job_id} had already ended ({_summary(now)}); nothing to cancel"
    if record.executor == "slurm":
        result = subprocess.run(["scancel", record.job_id], capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise UsageError(f"scancel refused ({result.stderr.strip().splitlines()[-1:]})", record.job_id,
                             "check the job id with python -m launch status")
        done = {job: state for job, state in now.items() if state in ENDED}
        return f"cancelled job {record.job_id}" + (f" (already ended: {_summary(done)})" if done else "")
    if record.executor == "local" and _controller_alive(record.job_id):
        os.kill(int(record.job_id), signal.SIGTERM)
        return f"stopping local job {record.job_id} (checkpoint, then exit)"
    return f"job {record.job_id} is not running"


def _summary(now: dict[str, str]) -> str:
    """"COMPLETED" for one run, or each run's state: "4242_0 COMPLETED, 4242_1 CANCELLED"."""
    if len(now) == 1:
        return next(iter(now.values()))
    return ", ".join(f"{job} {state}" for job, state in now.items())


SKIPPED_DIRS = {"checkpoints", "submitit"}


def pack(record: Record, stream: IO[bytes]) -> None:
    """A tar.gz of each run folder (metrics, config, pictures, weights, W&B files, logs) without checkpoints."""
    with tarfile.open(fileobj=stream, mode="w|gz") as tar:
        for run in record.runs:
            root = Path(run.run_dir)
            if not root.is_dir():
                continue
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if not (Path(folder) == root and d in SKIPPED_DIRS))
                for name in sorted(files):
                    path = Path(folder, name)
                    if not name.startswith(".") and path.is_file() and not path.is_symlink():
                        tar.add(path, arcname=f"{root.name}/{path.relative_to(root)}", recursive=False)
            for log in run.logs:
                if Path(log).is_file():
                    tar.add(log, arcname=f"{root.name}/logs/{Path(log).name}", recursive=False)


def unpack(stream: IO[bytes], to: Path) -> list[Path]:
    """Extract a `pack` stream below ``to``; returns the run folders it held."""
    to.mkdir(parents=True, exist_ok=True)
    tops = set()
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for member in tar:
            if member.isfile():  # regular files only; "data" also refuses absolute and ../ paths
                tar.extract(member, to, filter="data")
                tops.add(member.name.split("/", 1)[0])
    return [to / top for top in sorted(tops)]


def fetch(record: Record, to: Path) -> list[Path]:
    buffer = io.BytesIO()
    pack(record, buffer)
    buffer.seek(0)
    return unpack(buffer, to)
