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

A takeover first claims the stale lease (``link(2)`` of ``.lease.takeover-<its token>``, which only
one contender can create), then renames the old lease away (checking it is still that holder's
file: a third contender's fresh lease is never moved), then creates its own. The token also tells
the other ranks that they see the same folder as rank 0.

Fencing: a holder that was stopped (SIGSTOP, a stall on NFS) past ``run.lease_stale_s`` may have
been taken over; it must write nothing more. The beat thread reads the lease at each beat and
raises a flag when it names another holder; `check_held` (called before every write into the run
folder and at each step boundary: no file-system call, only the flag and a clock) raises
`LeaseLost` (exit 1) once the flag is up, and also when the last confirmation is older than half
of ``run.lease_stale_s`` (the process was frozen: it reads the lease again before answering).
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
from ae_dist.errors import AeDistError, UsageError

LEASE = ".lease"
HEARTBEAT_S = 5.0  # at most; a quarter of run.lease_stale_s when that is shorter


class LeaseLost(AeDistError):
    """Another launch took over this run folder's lease: this process writes nothing more (exit 1)."""


_held: Lease | None = None  # the lease this process holds (rank 0 of a run that writes), for check_held


def check_held(what: str = "") -> None:
    """Raise `LeaseLost` when this process held the run folder's lease and has lost it; else nothing.

    Cheap (a flag and a clock, no file-system call unless the process was frozen for a while), so it
    is called right before each rename into place and at each step boundary.
    """
    lease = _held
    if lease is not None and lease.lost():
        holder = read_holder(lease.path.parent)
        who = holder.describe() if holder is not None and holder.token else "nobody (the lease file is gone)"
        raise LeaseLost(f"this run lost the lease of {lease.path.parent} to {who}; stopped without writing "
                        f"{what or 'anything'} more", "run.lease_stale_s",
                        "the run folder belongs to the other launch now; raise run.lease_stale_s if this process "
                        "was only slow (a frozen node, a stalled file system)")


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


def lease_lost() -> bool:
    """Whether this process held the run folder's lease and lost it (for the ranks' agreement, `ae_dist.sync`)."""
    return _held is not None and _held.lost()


def lost_by_rank0() -> LeaseLost:
    """What the other ranks raise when rank 0 lost the lease: they stop at the same step."""
    return LeaseLost("rank 0 lost the run folder's lease to another launch; this rank stops with it", "run.lease_stale_s",
                     "the run folder belongs to the other launch now; raise run.lease_stale_s if rank 0 was only slow")


class Lease:
    """The run folder's lease, held by this process until `release`."""

    def __init__(self, run_dir: Path, stale_s: float):
        self.path = Path(run_dir) / LEASE
        self.stale_s = stale_s
        self.beat_s = min(HEARTBEAT_S, stale_s / 4)
        self.token = secrets.token_hex(8)
        self.took_over = ""  # the token of the stale holder whose lease this one replaced
        self._stopped = threading.Event()
        self._lost = threading.Event()
        self._confirmed = 0.0  # time.monotonic() before the newest read that found this lease in place
        self._reading = threading.Lock()

    def take(self) -> None:
        """Create the lease, taking over a dead holder's or this job's own; UsageError when a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = Job.from_env().id
        for _ in range(5):
            started = time.monotonic()
            if self._create():
                global _held
                self._confirmed, _held = started, self
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
            return _link(mine, self.path)
        finally:
            mine.unlink(missing_ok=True)

    def _remove_stale(self, holder: Holder) -> None:
        """Claim the stale holder's lease (one contender wins), rename it away, drop it if it is still theirs.

        Without the claim, a contender that read the stale holder before another took over would rename
        the new holder's fresh lease away, and a third could create one in the gap before it is put back.
        """
        claim = self.path.with_name(f"{LEASE}.takeover-{holder.token or 'unreadable'}")
        mine = self.path.with_name(f"{LEASE}.{self.token}.claim")
        mine.write_text(self.token + "\n", encoding="utf-8")
        try:
            if not _link(mine, claim):
                if time.time() - _mtime(claim) < self.stale_s:
                    return  # another contender is taking it over: look again
                claim.unlink(missing_ok=True)  # left by a contender killed half-way
                if not _link(mine, claim):
                    return
        finally:
            mine.unlink(missing_ok=True)
        grave = self.path.with_name(f"{LEASE}.stale-{self.token}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            claim.unlink(missing_ok=True)
            return
        moved = _read(grave)
        if moved is not None and moved.token != holder.token:  # not the stale one after all: put it back
            with contextlib.suppress(FileExistsError):
                os.link(grave, self.path)
            claim.unlink(missing_ok=True)
        else:
            self.took_over = holder.token or "unreadable"
        grave.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stopped.wait(self.beat_s):
            self._confirm()

    def _confirm(self) -> None:
        """Read the lease: still ours, refresh its heartbeat; another's (or gone), raise the lost flag."""
        with self._reading:
            if self._lost.is_set():
                return
            at = time.monotonic()
            try:
                holder = read_holder(self.path.parent)
                if holder is None or holder.token != self.token:
                    self._lost.set()
                    return
                os.utime(self.path)
            except OSError:
                return  # cannot tell now; a confirmation too old counts as lost (`lost`)
            self._confirmed = at

    def lost(self) -> bool:
        """Whether another launch may hold the folder now (the flag, or no confirmation for stale_s / 2)."""
        if not self._lost.is_set() and time.monotonic() - self._confirmed > self.stale_s / 2:
            self._confirm()  # frozen for a while (SIGSTOP, a stalled file system): look before answering
            if time.monotonic() - self._confirmed > self.stale_s:
                self._lost.set()  # unconfirmed for longer than another host waits before taking over
        return self._lost.is_set()

    def holds(self) -> bool:
        holder = read_holder(self.path.parent)
        return holder is not None and holder.token == self.token

    def release(self) -> None:
        global _held
        self._stopped.set()
        if _held is self:
            _held = None
        if not self._lost.is_set() and self.holds():
            self.path.unlink(missing_ok=True)
        if self.took_over:
            self.path.with_name(f"{LEASE}.takeover-{self.took_over}").unlink(missing_ok=True)


def _link(source: Path, target: Path) -> bool:
    """``link(2)`` of ``source`` to ``target``: False when ``target`` exists. Over NFS a retransmitted
    link can report EEXIST although it succeeded: then ``source`` has two links."""
    try:
        os.link(source, target)
        return True
    except FileExistsError:
        try:
            return os.stat(source).st_nlink == 2 and os.path.samefile(source, target)
        except OSError:
            return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
