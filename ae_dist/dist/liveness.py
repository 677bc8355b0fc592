"""Which rank went silent: heartbeats in the rendezvous store, read only after a failure.

gloo's timeout says "Timed out waiting 300000ms for recv operation", never which rank
stopped answering, and after it the process group cannot be asked (the timed-out pair is
closed); NCCL does not raise at all: it blocks in a CUDA sync until its watchdog kills the
process. So each rank sets its own beat in the rendezvous store from a thread, off the training
path (one request per beat, one more to look for an incident), and a watchdog thread gives up
when this rank has finished no step for ``dist.timeout_s``, wherever the main thread is blocked;
the process group's own timeout is longer (`group_timeout`), so on gloo and NCCL alike it is the
watchdog, or a collective that fails at once (a closed connection), that reports. The first rank
to report claims the incident and alone reads every rank's beat, twice, three beats apart, in
one batched request each (``multi_get``): the ranks whose beat stood still are silent (crashed,
SIGSTOP, a frozen node); when all beat, the ranks whose main thread is behind the others are
stalled. The others read its one answer. A store that does not answer either means its host
(rank 0, or torchrun's agent) is the silent one.

Each rank's beat also carries its host name, and a launcher may beat a counter per host
(`HostBeat`, one per node under `python -m launch.elastic`, in the store that
``AE_DIST_HOST_BEATS`` names; torchrun's rendezvous store): a silent rank whose host still
beats has hung (stopped, stuck); one whose host is silent too is lost. With a run folder, the
first rank to find a silent peer claims an incident in the store and every live rank writes
its stacks to ``run.dir/incidents/`` (`ae_dist.dist.incidents`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch.distributed as dist

from ae_dist.dist import incidents
from ae_dist.dist.job import Job
from ae_dist.errors import EXIT_FAILED, PeerLost
from ae_dist.dist.incidents import CRASHED, HUNG, LOST, SILENT, STALLED, Silent

T = TypeVar("T")
PEER_FAILURE_SIGNS = ("Timed out", "timed out", "Connection closed by peer", "Connection reset by peer",
                      "Broken pipe", "pair closure")


def within(seconds: float, make: Callable[[], T]) -> T:
    """``make()`` run in a thread; TimeoutError if it has not returned after ``seconds``.

    A TCPStore client whose server accepts the connection but never answers (another
    program on the port, a stopped process) blocks in its constructor with no timeout.
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = make()
        except Exception as err:  # handed to the caller below
            box["error"] = err

    thread = threading.Thread(target=target, name="ae-dist-store-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    if "value" not in box:
        raise TimeoutError(f"no answer within {seconds:g} s")
    return box["value"]  # type: ignore[return-value]


HOST_BEATS = "AE_DIST_HOST_BEATS"  # addr:port of the store where each host's launcher beats (set by that launcher)


def host_key(host: str) -> str:
    """The store counter that a launcher on ``host`` bumps while it runs."""
    return f"ae_dist/hosts/{host}/beat"


def host_beats_store(timeout_s: float) -> dist.Store | None:
    """The store that ``AE_DIST_HOST_BEATS`` names; None without a launcher that beats."""
    addr, _, port = os.environ.get(HOST_BEATS, "").rpartition(":")
    if not addr or not port.isdigit():
        return None
    return dist.TCPStore(addr, int(port), is_master=False, timeout=datetime.timedelta(seconds=timeout_s))


def beat_interval(timeout_s: float) -> float:
    """Seconds between heartbeats for ``dist.timeout_s``: a tenth of it, within 0.2-2 s."""
    return min(2.0, max(0.2, timeout_s / 10))


def group_timeout(timeout_s: float) -> float:
    """The process group's own timeout: ``dist.timeout_s`` plus time for the heartbeat thread, which gives up
    first (no step for ``dist.timeout_s``), to name the silent rank and leave the stacks: on NCCL, whose
    watchdog kills the process at its timeout, that thread is the only one that can."""
    return timeout_s + max(10.0, 10 * beat_interval(timeout_s))


class Heartbeat:
    """This rank's beat ``<prefix>beat/<rank>`` = "count progress host" in the store at ``addr:port``, set every
    ``interval`` s (one request, and one more to look for an incident: O(1) per rank), and a watchdog.

    The main thread marks its progress (`step_started`, `step_done`: two attribute writes, no store call);
    the watchdog thread gives up when no step has finished for ``timeout_s`` since the first one of this
    start (`arm`), independent of the main thread, which may be blocked for good in a CUDA sync or a
    sleep: it claims the incident, leaves the stacks and exits with one line (`fail`).
    """

    def __init__(self, addr: str, port: int, host: str, prefix: str, rank: int, world_size: int, timeout_s: float,
                 incidents_dir: Path | None = None):
        self.addr, self.port, self.host = addr, port, host  # host: who serves the store, for messages
        self.prefix, self.rank, self.world_size, self.timeout_s = prefix, rank, world_size, timeout_s
        self.interval = beat_interval(timeout_s)
        self.incidents_dir, self.hostname = incidents_dir, socket.gethostname()
        self.stacks_written = ""  # the incident stamp this rank wrote its stacks for
        self.steps, self.in_step = 0, False  # the main thread's progress: steps done, inside one now
        self.progress_at, self.armed = time.monotonic(), False
        self._failing = threading.Lock()  # one report per process: the watchdog's or the main thread's
        self._stopped = threading.Event()
        threading.Thread(target=self._beat, name="ae-dist-heartbeat", daemon=True).start()
        threading.Thread(target=self._watch, name="ae-dist-watchdog", daemon=True).start()

    @property
    def progress(self) -> int:
        """2 x steps done, + 1 inside a step: a rank waiting in a step's collective is ahead of one stuck before it."""
        return 2 * self.steps + self.in_step

    def step_started(self) -> None:
        self.in_step = True

    def step_done(self) -> None:
        self.steps, self.in_step, self.progress_at, self.armed = self.steps + 1, False, time.monotonic(), True

    def disarm(self) -> None:
        """The loop is over (the wrap-up, W&B's finish may take long on rank 0 alone): no more watching."""
        self.armed = False

    def _client(self) -> dist.Store:
        """This start's view of the store: heartbeats, hosts, the incident."""
        store = dist.TCPStore(self.addr, self.port, is_master=False, timeout=datetime.timedelta(seconds=self.timeout_s))
        return dist.PrefixStore(self.prefix, store)

    def _beat(self) -> None:
        try:
            store = self._client()
            beats = 0
            while not self._stopped.is_set():
                beats += 1
                store.set(f"beat/{self.rank}", f"{beats} {self.progress} {self.hostname}")
                if self.incidents_dir is not None and not self.stacks_written and store.check(["incident"]):
                    stamp = store.get("incident").decode().split()[0]
                    self.write_stacks(stamp, "a peer found a silent rank: this rank's stacks at that moment")
                self._stopped.wait(self.interval)
        except Exception:  # the store is gone (the run ended or its host died); the watchdog or main thread reports
            return

    def _watch(self) -> None:
        while not self._stopped.wait(self.interval):
            quiet = time.monotonic() - self.progress_at
            if self.armed and quiet > self.timeout_s:
                self.fail(TimeoutError(f"no step finished for {quiet:.0f} s, seen by its heartbeat thread"))
                return

    def fail(self, err: BaseException) -> None:
        """From the watchdog: name the silent rank(s), leave the stacks, one line, exit 1 (the main thread may
        never return from where it is blocked)."""
        if not self._failing.acquire(blocking=False):
            return  # the main thread is reporting a failed collective
        lost = self.diagnose(err, timed_out=True)
        sys.stdout.flush()
        for line in lost.lines():  # PeerLost names its rank itself
            os.write(2, (line + "\n").encode())
        os._exit(EXIT_FAILED)

    def stop(self) -> None:
        self._stopped.set()

    def _read_beats(self, store: dist.Store) -> list[tuple[int, int, str] | None]:
        """Every rank's beat (count, progress, host) in one batched request; None for a rank that never beat."""
        keys = [f"beat/{r}" for r in range(self.world_size)]
        if store.check(keys):
            values: list[bytes | None] = list(store.multi_get(keys))
        else:  # a rank that never beat (rare: it died at start): look key by key
            values = [store.get(key) if store.check([key]) else None for key in keys]
        beats: list[tuple[int, int, str] | None] = []
        for value in values:
            count, progress, host = (value.decode().split(" ", 2) + ["", "", ""])[:3] if value else ("", "", "")
            beats.append((int(count), int(progress), host) if count.isdigit() and progress.isdigit() else None)
        return beats

    def silent_ranks(self, timed_out: bool = True) -> list[Silent] | None:
        """Ranks that went silent, from two batched reads of every beat three intervals apart (one rank does
        this, the one that claimed the incident); None when the store does not answer.

        A rank whose beat stood still is hung when its host's launcher still beats, lost when that is
        silent too, crashed when the collective saw its connection close (not ``timed_out``) while its
        host beats. When every beat moves, the ranks whose main thread is behind the others (no step,
        while the others wait inside one) are stalled.
        """

        def watch() -> list[Silent]:
            store = self._client()
            launchers = host_beats_store(self.timeout_s)
            beat = (lambda host: launchers.add(host_key(host), 0)) if launchers is not None else (lambda host: 0)
            before = self._read_beats(store)
            hosts = {r: (b[2] if b else "?") for r, b in enumerate(before)}
            host_beats = {host: beat(host) for host in set(hosts.values())}
            time.sleep(3 * self.interval)
            after = self._read_beats(store)
            hosts.update({r: b[2] for r, b in enumerate(after) if b})
            moved = {host: beat(host) != host_beats[host] for host in host_beats}
            kinds = {host: (HUNG if timed_out else CRASHED) if moved[host] else LOST if host_beats[host] else SILENT
                     for host in host_beats}
            silent = [Silent(r, hosts[r], kinds[hosts[r]]) for r in range(self.world_size)
                      if r != self.rank and (after[r] is None or before[r] is None or after[r][0] == before[r][0])]
            if silent or not timed_out:
                return silent
            progress = [b[1] for b in after if b]
            if len(progress) == self.world_size and max(progress) > min(progress):
                return [Silent(r, hosts[r], STALLED) for r in range(self.world_size) if after[r][1] == min(progress)]
            return []

        try:
            return within(8 * self.interval + 2, watch)  # 3 intervals of watching, the rest for slow answers
        except (TimeoutError, RuntimeError, ValueError):
            return None

    def write_stacks(self, stamp: str, reason: str, err: BaseException | None = None) -> str:
        self.stacks_written = stamp
        if self.incidents_dir is None:
            return stamp
        with contextlib.suppress(OSError):  # a full or gone run folder: the error line still says what happened
            incidents.write_stacks(self.incidents_dir, stamp, self.rank, self.hostname, reason, err)
        return stamp

    def diagnose(self, err: BaseException, timed_out: bool) -> PeerLost:
        """Claim the incident (or join a peer's); the claimant alone reads every rank's beat and publishes who
        went silent, the others read that one answer; each writes its stacks. The `PeerLost` to say."""
        self.stacks_written = "pending"  # the heartbeat thread leaves this rank's stacks to this call
        mine = incidents.stamp_now()
        try:
            stamp, claimant = within(self.interval * 4 + 2, lambda: self._client().compare_set(
                "incident", "", f"{mine} {self.rank}")).decode().split()
        except (TimeoutError, RuntimeError, ValueError):
            stamp, claimant = mine, str(self.rank)  # the store is silent: this rank's own stamp
        if claimant == str(self.rank):
            silent = self.silent_ranks(timed_out)
            line = silent_line(silent, self.host)
            with contextlib.suppress(TimeoutError, RuntimeError):
                within(self.interval * 2 + 1, lambda: self._client().set("incident/verdict", line))
        else:
            silent, line = None, ""
            with contextlib.suppress(TimeoutError, RuntimeError):
                line = within(8 * self.interval + 4, lambda: self._client().get("incident/verdict")).decode()
            if not line:
                silent = self.silent_ranks(timed_out)
                line = silent_line(silent, self.host)
        self.write_stacks(stamp, f"this rank gave up ({line})", err)
        if claimant == str(self.rank) and silent is not None and self.incidents_dir is not None:
            job = Job.from_env()
            record = incidents.silent_record(silent, self.rank, self.hostname, job.id,
                                             str(job.slurm_restart_count), self.timeout_s)
            with contextlib.suppress(OSError):
                incidents.write_verdict(self.incidents_dir, stamp, record)
        text = str(err)
        first = text.strip().splitlines()[0] if text.strip() else ""
        cause = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:100]  # gloo's "[file.cc:78] Timed out ..."
        stacks = f"; stacks in {self.incidents_dir}/{stamp}-*" if self.incidents_dir is not None else ""
        return PeerLost(f"{line}; rank {self.rank} on {self.hostname} gave up ({cause}){stacks}",
                        f"dist.timeout_s={self.timeout_s:g}",
                        "the newest checkpoint is intact; run the same command to resume, and find out what stopped "
                        "that rank (or raise dist.timeout_s if it was only slow)")


class HostBeat:
    """A launcher's side: bump ``host_key(host)`` in the store at ``addr:port`` every ``interval_s`` until `stop`.

    The store may not be up yet (torchrun on the first node hosts it) or gone (the job ends):
    the thread keeps trying, quietly.
    """

    def __init__(self, addr: str, port: int, host: str, interval_s: float = 0.5):
        self.addr, self.port, self.key, self.interval_s = addr, port, host_key(host), interval_s
        self._stopped = threading.Event()
        threading.Thread(target=self._beat, name="ae-dist-host-beat", daemon=True).start()

    def _beat(self) -> None:
        while not self._stopped.is_set():
            try:
                socket.create_connection((self.addr, self.port), timeout=2).close()  # up yet? (quietly)
                store = dist.TCPStore(self.addr, self.port, is_master=False, timeout=datetime.timedelta(seconds=10))
                while not self._stopped.is_set():
                    store.add(self.key, 1)
                    self._stopped.wait(self.interval_s)
            except Exception:  # not up yet, or gone
                self._stopped.wait(1.0)

    def stop(self) -> None:
        self._stopped.set()


KIND_MEANS = {HUNG: "hung: no heartbeat while its host's launcher still answers",
              STALLED: "stalled: its heartbeat answers but its main thread made no step while the others wait",
              LOST: "lost: no heartbeat and nothing on its host answers",
              CRASHED: "crashed: its connection closed while its host's launcher still answers",
              SILENT: "no heartbeat"}


def silent_line(silent: list[Silent] | None, store_host: str) -> str:
    if silent is None:
        return f"{store_host} stopped answering: its rendezvous store is silent too"
    if not silent:
        return "a collective failed although every rank still has a heartbeat (a rank slower than the timeout?)"
    return "; ".join(f"rank {s.rank} on {s.host} stopped answering ({KIND_MEANS[s.kind]})" for s in silent)


def peer_lost(err: RuntimeError, heartbeat: Heartbeat | None) -> PeerLost | None:
    """Name the silent rank(s) behind a failed collective; None when ``err`` is something else."""
    text = str(err)
    if heartbeat is None or isinstance(err, PeerLost) or not (
            isinstance(err, dist.DistError) or any(sign in text for sign in PEER_FAILURE_SIGNS)):
        return None
    if not heartbeat._failing.acquire(blocking=False):
        threading.Event().wait()  # the watchdog is reporting: it ends the process with its line
    return heartbeat.diagnose(err, timed_out="imed out" in text)


def die_with_launcher(env: dict[str, str], interval_s: float = 1.0) -> None:
    """Under torchrun or srun, exit (writing nothing more) within seconds of the launching process's death.

    torchrun starts its workers in sessions of their own, so a ``kill -9`` of the agent (the OOM
    killer, a user) reaches none of them; left alone they would train on and write into a run
    folder that the rerun of the same command is writing too. A thread compares the parent pid
    with the one at start: a reparented worker is an orphan, and leaves with os._exit at once.
    """
    if env.get("TORCHELASTIC_RUN_ID") is None and env.get("SLURM_STEP_ID") is None:
        return  # started by a person's shell (nohup, screen): outliving it is wanted
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.write(2, f"error: the launcher (pid {parent}) is gone; this worker (pid {os.getpid()}) stops without "
                    "writing anything more (launcher): run the same command again to resume\n".encode())
        os._exit(1)

    threading.Thread(target=watch, name="ae-dist-parent-watch", daemon=True).start()
