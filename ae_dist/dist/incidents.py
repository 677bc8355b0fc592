"""Incidents: what the live ranks leave in ``run.dir/incidents/`` when a rank stops answering.

    ls runs/digits/incidents/
    20261129-153819-rank0-aenode1.txt    # rank 0's Python stacks, every thread (faulthandler)
    20261129-153819-silent.json          # who went silent, on which host, and whether it hung
    20261129-153851-requeue.json         # (elastic SLURM jobs) the hosts the requeued job excludes

One incident is one time stamp. The first rank that finds a silent peer claims it in the
rendezvous store (`ae_dist.dist.liveness`); every other live rank sees the claim within a
heartbeat and writes its own stacks under the same stamp, wherever its main thread is stuck.
A silent rank is ``hung`` when its host's launcher still beats in the store (the process is
stopped or stuck: the host is suspect), ``lost`` when nothing of its host answers (killed, or
its network gone), ``silent`` when no launcher beats there to tell, ``stalled`` when its heartbeat
still beats but its main thread made no step while the others wait in one (a sleep, a stuck kernel).
"""

from __future__ import annotations

import faulthandler
import json
import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FOLDER = "incidents"
HUNG, LOST, CRASHED, SILENT, STALLED = "hung", "lost", "crashed", "silent", "stalled"


@dataclass(frozen=True)
class Silent:
    rank: int
    host: str
    kind: str  # HUNG | LOST | CRASHED | SILENT | STALLED

    def describe(self) -> str:
        return f"rank {self.rank} on {self.host} ({self.kind})"


def stamp_now() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def write_stacks(folder: Path, stamp: str, rank: int, host: str, reason: str, err: BaseException | None = None) -> Path:
    """This process's Python stacks, every thread, as ``<stamp>-rank<r>-<host>.txt``; the error's traceback first."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}-rank{rank}-{host}.txt"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"rank {rank} on {host}, pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}: {reason}\n\n")
        if err is not None:
            fh.write("The failed call:\n" + "".join(traceback.format_exception(err)) + "\n")
        fh.write("Every thread now (faulthandler):\n")
        fh.flush()
        faulthandler.dump_traceback(file=fh, all_threads=True)
    return path


def write_verdict(folder: Path, stamp: str, record: dict[str, Any]) -> Path:
    """``<stamp>-<kind>.json``, written whole (temporary name, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}-{record['kind']}.json"
    tmp = folder / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def silent_record(silent: list[Silent], reporter: int, host: str, job: str, restart: str, timeout_s: float) -> dict:
    return {"kind": "silent", "job": job, "restart": restart, "reported_by": {"rank": reporter, "host": host},
            "timeout_s": timeout_s, "silent": [asdict(s) for s in silent]}


def records(folder: Path, kind: str) -> list[dict[str, Any]]:
    """Every ``*-<kind>.json`` of the folder, oldest first (with its ``stamp``)."""
    found = []
    for path in sorted(folder.glob(f"*-{kind}.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append(record | {"stamp": path.name[: -len(f"-{kind}.json")]})
    return found


def failed_hosts(folder: Path, job: str, restart: str | None = None, kinds: tuple[str, ...] = (HUNG, LOST, STALLED)) -> list[str]:
    """Hosts that the job's incidents named (one restart of it, or all), in the order first named."""
    hosts: list[str] = []
    for record in records(folder, "silent"):
        if record.get("job") != job or (restart is not None and str(record.get("restart")) != str(restart)):
            continue
        hosts += [s["host"] for s in record.get("silent", []) if s.get("kind") in kinds and s["host"] not in hosts]
    return hosts


def summary(folder: Path, newest: int = 3) -> list[str]:
    """Lines for `python -m launch status`: the newest incidents and exclusions."""
    lines = []
    for record in records(folder, "silent")[-newest:]:
        who = ", ".join(Silent(**s).describe() for s in record.get("silent", [])) or "no rank named (all had a heartbeat)"
        stacks = len(list(folder.glob(f"{record['stamp']}-rank*.txt")))
        by = record.get("reported_by", {})
        lines.append(f"incident {record['stamp']}: {who}; reported by rank {by.get('rank')} on {by.get('host')}; "
                     f"stacks of {stacks} rank(s) in {folder}")
    requeues = records(folder, "requeue")
    if requeues:
        last = requeues[-1]
        lines.append(f"excluded hosts: {','.join(last.get('excluded', [])) or 'none'} (job {last.get('job')}, "
                     f"requeue {last['stamp']}: {last.get('reason', '')})")
    return lines
