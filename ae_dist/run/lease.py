"""One writer per run folder: ``run.dir/.lease``, held by the live run's rank 0.

The lease names its holder (host, pid, the process's start time, the SLURM job id or torchrun
run id) and a random token; the holder refreshes the file's mtime every HEARTBEAT_S seconds.
It is created with ``link(2)`` of a fully written private file, which is atomic on local file
systems and on NFS and Lustre alike (no flock). Another launch on the folder finds it and:

- the holder is alive: stops before touching anything (exit 2, one line naming holder and job);
- the holder is the same job (a SLURM requeue, a torchrun restart): takes it over at once;
- the holder is dead: on the same host its pid is gone (or is another process now); on another
  host its heartbeat is older than ``run.lease_stale_s`` (default 60 s: clocks of the nodes must
  agree to within that): takes it over with one warning line.

A takeover renames the old lease away first, which only one contender can do, then creates its
own. The token also tells the other ranks that they see the same folder as rank 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ae_dist.dist.job import Job
from ae_dist.errors import UsageError

LEASE = ".lease"
HEARTBEAT_S = 5.0


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # the holder process's start (seconds since the epoch)
    job: str  # SLURM job id, torchrun run id, or ""
    token: str
    heartbeat: float  # the lease file's mtime

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"{self.host} pid {self.pid} (job {self.job or 'none'}) since {since}"


def _process_start(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), or None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def read_holder(run_dir: Path) -> Holder | None:
    return _read(Path(run_dir) / LEASE)


def _read(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        mtime = path.stat().st_mtime
        return Holder(str(data["host"]), int(data["pid"]), float(data["started"]), str(data.get("job", "")),
                      str(data["token"]), mtime)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # torn or foreign: treat as a dead holder's
        return Holder("?", 0, 0.0, "", "", 0.0)


def is_alive(holder: Holder, stale_s: float, now: float | None = None) -> bool:
    if holder.host == socket.gethostname():
        started = _process_start(holder.pid) if holder.pid > 0 else None
        return started is not None and abs(started - holder.started) < 2.0
    return (time.time() if now is None else now) - holder.heartbeat < stale_s


def in_use(holder: Holder) -> UsageError:
    return UsageError(f"run.dir is in use by {holder.describe()}", "run.dir",
                      "wait for it, cancel it, or choose another run.dir")


def check_free(run_dir: Path, stale_s: float) -> None:
    """For launchers: refuse a folder that a live run holds (the same line the trainer says)."""
    holder = read_holder(run_dir)
    if holder is not None and holder.token and is_alive(holder, stale_s):
        raise in_use(holder)


class Lease:
    """The run folder's lease, held by this process until `release`."""

    def __init__(self, run_dir: Path, stale_s: float):
        self.path = Path(run_dir) / LEASE
        self.stale_s = stale_s
        self.token = secrets.token_hex(8)
        self._stopped = threading.Event()

    def take(self) -> None:
        """Create the lease, taking over a dead holder's or this job's own; UsageError when a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = Job.from_env().id
        for _ in range(5):
            if self._create():
                threading.Thread(target=self._beat, name="ae-dist-lease", daemon=True).start()
                return
            holder = read_holder(self.path.parent)
            if holder is None:
                continue  # released between our attempt and our look: try again
            same_job = bool(me) and holder.job == me
            if not same_job and is_alive(holder, self.stale_s):
                raise in_use(holder)
            if not same_job:
                print(f"warning: taking over the lease of {holder.describe()}, which is gone", file=sys.stderr,
                      flush=True)
            self._remove_stale(holder)
        raise UsageError("could not take the run folder's lease (another launch keeps racing for it)", "run.dir",
                         "start one run at a time on a run.dir")

    def _create(self) -> bool:
        mine = self.path.with_name(f"{LEASE}.{self.token}")
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()) or time.time(),
                  "job": Job.from_env().id, "token": self.token}
        mine.write_text(json.dumps(record) + "\n", encoding="utf-8")
        try:
            os.link(mine, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            mine.unlink(missing_ok=True)

    def _remove_stale(self, holder: Holder) -> None:
        """Rename the stale lease away (one contender wins), then drop it if it is still that holder's."""
        grave = self.path.with_name(f"{LEASE}.stale-{self.token}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        moved = _read(grave)
        if moved is not None and moved.token != holder.token:  # a new holder came in between: put theirs back
            with contextlib.suppress(FileExistsError):
                os.link(grave, self.path)
        grave.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            try:
                if self.holds():
                    os.utime(self.path)
            except OSError:
                pass

    def holds(self) -> bool:
        holder = read_holder(self.path.parent)
        return holder is not None and holder.token == self.token

    def release(self) -> None:
        self._stopped.set()
        if self.holds():
            self.path.unlink(missing_ok=True)
