"""Which rank went silent: heartbeats in the rendezvous store, read only after a failure.

gloo's timeout says "Timed out waiting 300000ms for recv operation", never which rank
stopped answering, and after it the process group cannot be asked (the timed-out pair is
closed). So each rank bumps its own counter in the rendezvous store from a thread, off the
training path; when a collective fails, `peer_lost` watches the counters for three beats
and names the ranks whose counters stand still (crashed, SIGSTOP, a frozen node). A store
that does not answer either means its host (rank 0, or torchrun's agent) is the silent one.
"""

from __future__ import annotations

import datetime
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch.distributed as dist

from ae_dist.errors import PeerLost

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


class Heartbeat:
    """This rank's counter ``<prefix>heartbeat/<rank>`` in the store at ``addr:port``, bumped every ``interval`` s."""

    def __init__(self, addr: str, port: int, host: str, prefix: str, rank: int, world_size: int, timeout_s: float):
        self.addr, self.port, self.host = addr, port, host  # host: who serves the store, for messages
        self.prefix, self.rank, self.world_size, self.timeout_s = prefix, rank, world_size, timeout_s
        self.interval = min(2.0, max(0.2, timeout_s / 10))
        self._stopped = threading.Event()
        threading.Thread(target=self._beat, name="ae-dist-heartbeat", daemon=True).start()

    def _client(self) -> dist.Store:
        store = dist.TCPStore(self.addr, self.port, is_master=False, timeout=datetime.timedelta(seconds=self.timeout_s))
        return dist.PrefixStore(self.prefix, store)

    def _beat(self) -> None:
        try:
            store = self._client()
            while not self._stopped.is_set():
                store.add(f"heartbeat/{self.rank}", 1)
                self._stopped.wait(self.interval)
        except Exception:  # the store is gone (the run ended or its host died); the main thread reports
            return

    def stop(self) -> None:
        self._stopped.set()

    def silent_ranks(self) -> list[int] | None:
        """Other ranks whose counter stood still for three intervals; None when the store does not answer."""

        def watch() -> list[int]:
            store = self._client()
            keys = [f"heartbeat/{r}" for r in range(self.world_size)]
            before = [store.add(key, 0) for key in keys]
            time.sleep(3 * self.interval)
            after = [store.add(key, 0) for key in keys]
            return [r for r in range(self.world_size) if r != self.rank and after[r] == before[r]]

        try:
            return within(8 * self.interval + 2, watch)  # 3 intervals of watching, the rest for slow answers
        except (TimeoutError, RuntimeError):
            return None


def peer_lost(err: RuntimeError, heartbeat: Heartbeat | None) -> PeerLost | None:
    """Name the silent rank(s) behind a failed collective; None when ``err`` is something else."""
    text = str(err)
    if heartbeat is None or isinstance(err, PeerLost) or not (
            isinstance(err, dist.DistError) or any(sign in text for sign in PEER_FAILURE_SIGNS)):
        return None
    first = text.strip().splitlines()[0] if text.strip() else ""
    cause = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:100]  # gloo's "[file.cc:78] Timed out ..."
    silent = heartbeat.silent_ranks()
    if silent is None:
        what = f"{heartbeat.host} stopped answering: its rendezvous store is silent too"
    elif silent:
        what = f"rank {', '.join(map(str, silent))} stopped answering: no heartbeat"
    else:
        what = "a collective failed although every rank still has a heartbeat (a rank slower than the timeout?)"
    return PeerLost(f"{what}; rank {heartbeat.rank} gave up ({cause})", f"dist.timeout_s={heartbeat.timeout_s:g}",
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
