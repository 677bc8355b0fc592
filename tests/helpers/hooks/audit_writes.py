"""Every write this process makes below AUDIT_UNDER, one line each in AUDIT_LOG (``time event path``), through
Python's audit hooks (open for writing, rename, replace, remove, link, utime, mkdir); with the slow steps of
`tests.helpers.hooks.slow_steps` (SLOW_STEP_S), so a test can stop the process between steps."""

from __future__ import annotations

import os
import sys
import time

import tests.helpers.hooks.slow_steps  # noqa: F401 (its patch of the step)

UNDER = os.path.realpath(os.environ["AUDIT_UNDER"])
LOG = os.open(os.environ["AUDIT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
WRITES = {"os.rename", "os.replace", "os.remove", "os.link", "os.utime", "os.mkdir", "os.truncate", "os.symlink"}


def _inside(path: object) -> str:
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    if not isinstance(path, str | os.PathLike):
        return ""
    full = os.path.realpath(os.fspath(path))
    return full if full == UNDER or full.startswith(UNDER + os.sep) else ""


def audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        paths = [path] if writes else []
    elif event in WRITES:
        paths = [a for a in args[:2] if isinstance(a, str | bytes | os.PathLike)]
    else:
        return
    for path in paths:
        inside = _inside(path)
        if inside:
            os.write(LOG, f"{time.time():.6f} {event} {inside}\n".encode())


sys.addaudithook(audit)
