"""Fault injection: a small disk of its own, a full disk, one clear error line, the fault table.

Each fault test may add a row to the fault table of docs/faults.md: with AE_DIST_FAULT_REPORT=PATH in
the environment, `report` appends one JSON line to PATH (benchmarks/faults_table.py prints them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

ERROR_LINE = re.compile(r"^(rank \d+: )?error: ")  # off rank 0 a rank's own error is prefixed with its rank


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if ERROR_LINE.match(line)]


def one_clear_line(text: str) -> str:
    """The output carries exactly one ``error:`` line and no traceback; return that line."""
    assert "Traceback" not in text, text[-4000:]
    lines = error_lines(text)
    assert len(lines) == 1, text[-4000:]
    return lines[0]


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A small RAM file system of its own (needs root, as in CI); unmounted afterwards."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (the disk-full test needs root): {done.stderr}"
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill_disk(mount_point: Path, leave_bytes: int) -> Path:
    """Take all free space of the file system but ``leave_bytes``."""
    stats = os.statvfs(mount_point)
    filler = mount_point / "filler"
    with open(filler, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, max(1, stats.f_bavail * stats.f_frsize - leave_bytes))
    return filler


def shown(line: str, run_dir: Path, width: int = 110) -> str:
    """An error line for the table: the test's temporary folder written as run.dir, cut to ``width``."""
    text = line.replace(str(run_dir), "<run.dir>")
    return f"`{text[:width]}{'...' if len(text) > width else ''}`"


def report(fault: str, injected: str, outcome: str, work_lost: str, data_lost: str) -> None:
    """One row of the fault table of docs/faults.md, when AE_DIST_FAULT_REPORT names a file."""
    path = os.environ.get("AE_DIST_FAULT_REPORT")
    if path:
        row = {"fault": fault, "injected": injected, "outcome": outcome, "work_lost": work_lost, "data_lost": data_lost}
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
