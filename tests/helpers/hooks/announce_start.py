"""Writes ``$STARTED_DIR/<host>-<pid>`` once the trainer has its stop-signal handlers (they go in before the hook)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

folder = Path(os.environ["STARTED_DIR"])
folder.mkdir(parents=True, exist_ok=True)
(folder / f"{socket.gethostname()}-{os.getpid()}").touch()
