"""metrics.jsonl: rank 0's append-only record of the run, one JSON object per line.

Records are ordered by (step, kind); a record the file already holds is not written again,
so a resumed run (which recomputes the same values) neither drops nor duplicates a step.
A line torn by a kill is dropped when the file is opened again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ae_dist.run.lease import check_held

KIND_ORDER = {"train": 0, "val": 1, "epoch": 2}  # records of one step, in the order they are written


class MetricsFile:
    """Append-only JSON lines; a torn last line (killed mid-write) is dropped on open."""

    def __init__(self, path: Path):
        self.path = path
        self.last: tuple[int, int] = (-1, -1)
        records = read_metrics(path)
        if path.exists():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # torn line: rewrite the good ones atomically
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
                os.replace(tmp, path)
        if records:
            self.last = record_key(records[-1])
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run's lifetime)

    def is_new(self, record: dict[str, Any]) -> bool:
        return record_key(record) > self.last

    def write(self, record: dict[str, Any]) -> None:
        check_held(self.path.name)  # a holder taken over writes nothing more (ae_dist.run.lease)
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        self.last = record_key(record)

    def close(self) -> None:
        self.fh.close()


def record_key(record: dict[str, Any]) -> tuple[int, int]:
    """Where a record stands in the run: (step, kind), epoch records after the step's train record."""
    return record["step"], KIND_ORDER[record["kind"]]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics.jsonl (a torn last line is ignored)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records
