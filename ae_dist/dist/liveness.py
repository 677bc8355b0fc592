"""Which rank went silent: heartbeats in the rendezvous store, read only after a failure.

gloo's timeout says "Timed out waiting 300000ms for recv operation", never which rank
stopped answering, and after it the process group cannot be asked (the timed-out pair is
closed). So each rank bumps its own counter in the rendezvous store from a thread, off the
training path; when a collective fails, `peer_lost` watches the counters for three beats
and names the ranks whose counters stand still (crashed, SIGSTOP, a frozen node). A store
that does not answer either means its host (rank 0, or torchrun's agent) is the silent one.

Each rank also publishes its host name, and a launcher may beat a counter per host
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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch.distributed as dist

from ae_dist.dist import incidents
from ae_dist.dist.job import Job
from ae_dist.errors import PeerLost
from ae_dist.dist.incidents import CRASHED, HUNG, LOST, SILENT, Silent

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


class Heartbeat:
    """This rank's counter ``<prefix>heartbeat/<rank>`` in the store at ``addr:port``, bumped every ``interval`` s."""

    def __init__(self, addr: str, port: int, host: str, prefix: str, rank: int, world_size: int, timeout_s: float,
                 incidents_dir: Path | None = None):
        self.addr, self.port, self.host = addr, port, host  # host: who serves the store, for messages
        self.prefix, self.rank, self.world_size, self.timeout_s = prefix, rank, world_size, timeout_s
        self.interval = min(2.0, max(0.2, timeout_s / 10))
        self.incidents_dir, self.hostname = incidents_dir, socket.gethostname()
        self.stacks_written = ""  # the incident stamp this rank wrote its stacks for
        self._stopped = threading.Event()
        threading.Thread(target=self._beat, name="ae-dist-heartbeat", daemon=True).start()

    def _client(self) -> dist.Store:
        """This start's view of the store: heartbeats, hosts, the incident."""
        store = dist.TCPStore(self.addr, self.port, is_master=False, timeout=datetime.timedelta(seconds=self.timeout_s))
        return dist.PrefixStore(self.prefix, store)

    def _beat(self) -> None:
        try:
            store = self._client()
            store.set(f"host/{self.rank}", self.hostname)
            while not self._stopped.is_set():
                store.add(f"heartbeat/{self.rank}", 1)
                if self.incidents_dir is not None and not self.stacks_written and store.check(["incident"]):
                    stamp = store.get("incident").decode().split()[0]
                    self.write_stacks(stamp, "a peer found a silent rank: this rank's stacks at that moment")
                self._stopped.wait(self.interval)
        except Exception:  # the store is gone (the run ended or its host died); the main thread reports
            return

    def stop(self) -> None:
        self._stopped.set()

    def silent_ranks(self, timed_out: bool = True) -> list[Silent] | None:
        """Other ranks whose counter stood still for three intervals; None when the store does not answer.

        A silent rank is hung when its host's launcher still beats, lost when that is silent too,
        crashed when the collective saw its connection close (not ``timed_out``) while its host beats.
        """

        def watch() -> list[Silent]:
            store = self._client()
            launchers = host_beats_store(self.timeout_s)
            beat = (lambda host: launchers.add(host_key(host), 0)) if launchers is not None else (lambda host: 0)
            keys = [f"heartbeat/{r}" for r in range(self.world_size)]
            hosts = {r: store.get(f"host/{r}").decode() if store.check([f"host/{r}"]) else "?"
                     for r in range(self.world_size)}
            before = [store.add(key, 0) for key in keys]
            beats = {host: beat(host) for host in set(hosts.values())}
            time.sleep(3 * self.interval)
            after = [store.add(key, 0) for key in keys]
            moved = {host: beat(host) != beats[host] for host in beats}
            kinds = {host: (HUNG if timed_out else CRASHED) if moved[host] else LOST if beats[host] else SILENT
                     for host in beats}
            return [Silent(r, hosts[r], kinds[hosts[r]]) for r in range(self.world_size)
                    if r != self.rank and after[r] == before[r]]

        try:
            return within(8 * self.interval + 2, watch)  # 3 intervals of watching, the rest for slow answers
        except (TimeoutError, RuntimeError):
            return None

    def write_stacks(self, stamp: str, reason: str, err: BaseException | None = None) -> str:
        self.stacks_written = stamp
        with contextlib.suppress(OSError):  # a full or gone run folder: the error line still says what happened
            incidents.write_stacks(self.incidents_dir, stamp, self.rank, self.hostname, reason, err)
        return stamp

    def report(self, err: BaseException, silent: list[Silent] | None) -> str:
        """Claim the incident (or join a peer's), write this rank's stacks and, if claimed, who went silent."""
        self.stacks_written = "pending"  # the heartbeat thread leaves this rank's stacks to this call
        mine = incidents.stamp_now()
        claim = f"{mine} {self.rank}"
        try:
            stamp, claimant = within(self.interval * 4 + 2, lambda: self._client().compare_set(
                "incident", "", claim)).decode().split()
        except (TimeoutError, RuntimeError, ValueError):
            stamp, claimant = mine, str(self.rank)  # the store is silent: this rank's own stamp
        self.write_stacks(stamp, f"this rank gave up on a collective ({silent_line(silent, self.host)})", err)
        if claimant == str(self.rank) and silent is not None:
            job = Job.from_env()
            record = incidents.silent_record(silent, self.rank, self.hostname, job.id,
                                             str(job.slurm_restart_count), self.timeout_s)
            with contextlib.suppress(OSError):
                incidents.write_verdict(self.incidents_dir, stamp, record)
        return stamp


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
    first = text.strip().splitlines()[0] if text.strip() else ""
    cause = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:100]  # gloo's "[file.cc:78] Timed out ..."
    silent = heartbeat.silent_ranks(timed_out="imed out" in text)
    stacks = ""
    if heartbeat.incidents_dir is not None:
        stamp = heartbeat.report(err, silent)
        stacks = f"; stacks in {heartbeat.incidents_dir}/{stamp}-*"
    return PeerLost(f"{silent_line(silent, heartbeat.host)}; rank {heartbeat.rank} on {heartbeat.hostname} gave up "
                    f"({cause}){stacks}", f"dist.timeout_s={heartbeat.timeout_s:g}",
                    "the newest checkpoint is intact; run the same command to resume, and find out what stopped "
                    "that rank (or raise dist.timeout_s if it was only slow)")


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
