"""Writes ``$STARTED_DIR/<host>-<pid>`` once the trainer has its stop-signal handlers.

The hook is imported when the interpreter starts, before the trainer installs its handlers, so it
announces from inside `StopSignals.install`, right after the handlers are in place.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ae_dist.dist import preemption

real_install = preemption.StopSignals.install.__func__


def install(cls, *args, **kwargs):
    stop = real_install(cls, *args, **kwargs)
    folder = Path(os.environ["STARTED_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{socket.gethostname()}-{os.getpid()}").touch()
    return stop


preemption.StopSignals.install = classmethod(install)
