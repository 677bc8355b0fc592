"""Read Weights & Biases offline run files (`wandb/offline-run-*/run-<id>.wandb`).

wandb 0.31 ships no Python reader for them, so the tests use this one.

File layout (written by the Go `wandb-core` service):
  file header: b":W&B" + uint16 LE magic 0xBEE1 + uint8 version 0   (7 bytes)
  then a LevelDB log: 32 KiB blocks (counted from the start of the file, header
  included); each chunk is crc32(4, LE) + length(2, LE) + type(1) + data, where the
  crc is zlib's CRC-32 (IEEE, not crc32c) over the type byte and the data; types
  FULL=1, FIRST=2, MIDDLE=3, LAST=4; a block tail shorter than 7 bytes is zero
  padding. Each reassembled payload is a `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto.wandb_internal_pb2 import HistoryItem, Record

from ae_dist.monitor.wandb_run import wandb_log_records


def _payloads(data: bytes, path: Path) -> Iterable[bytes]:
    """The reassembled record payloads of a whole .wandb file; damage raises ValueError."""
    try:
        yield from wandb_log_records(data, strict=True)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """All protobuf records of one .wandb file, in file order."""
    path = Path(path)
    records = []
    for payload in _payloads(path.read_bytes(), path):
        record = Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


@dataclass
class OfflineRun:
    """What one .wandb file says about its run (one `wandb.init` ... `finish`)."""

    path: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    start_time: float = 0.0  # seconds since the epoch, from the run record
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # relative to <run dir>/files
    images: list[str] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return [row["_step"] for row in self.history]


def _keys(item: Any) -> list[str]:
    return list(item.nested_key) or [item.key]


def _set(target: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _remove(target: dict[str, Any], keys: Sequence[str]) -> None:
    for key in keys[:-1]:
        target = target.get(key, {})
    target.pop(keys[-1], None)


def _history_value(item: HistoryItem) -> Any:
    if item.value_json:
        return json.loads(item.value_json)
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def _image_keys(row: dict[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in row.items():
        if isinstance(value, dict):
            if value.get("_type") == "image-file":
                yield prefix + key
            else:
                yield from _image_keys(value, f"{prefix}{key}.")


def _apply(
    target: dict[str, Any], updates: Iterable[Any], removes: Iterable[Any]
) -> None:
    for item in updates:
        _set(target, _keys(item), json.loads(item.value_json))
    for item in removes:
        _remove(target, _keys(item))


def _single_wandb_file(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.glob("run-*.wandb"))
    if len(found) != 1:
        raise ValueError(f"{path}: expected one run-*.wandb file, found {len(found)}")
    return found[0]


def read_run(run_dir_or_wandb_file: str | os.PathLike[str]) -> OfflineRun:
    """Summarise one offline run folder (`offline-run-*`) or one .wandb file."""
    path = _single_wandb_file(Path(run_dir_or_wandb_file))
    run = OfflineRun(path=path)
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project = r.run_id, r.project
            run.group, run.name = r.run_group, r.display_name
            run.start_time = r.start_time.seconds + r.start_time.nanos / 1e9
            _apply(run.config, r.config.update, r.config.remove)
            _apply(run.summary, r.summary.update, r.summary.remove)
        elif kind == "config":
            _apply(run.config, record.config.update, record.config.remove)
        elif kind == "summary":
            _apply(run.summary, record.summary.update, record.summary.remove)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, _keys(item), _history_value(item))
            row.setdefault("_step", record.history.step.num)
            run.history.append(row)
            run.images += [k for k in _image_keys(row) if k not in run.images]
        elif kind == "files":
            run.files += [f.path for f in record.files.files if f.path not in run.files]
    for internal in (run.config, run.summary):
        internal.pop("_wandb", None)
    return run


def find_wandb_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every .wandb file below `root` (symlinks such as `latest-run` not followed)."""
    found = set()
    for folder, _, names in os.walk(root):
        found.update(Path(folder, n) for n in names if n.endswith(".wandb"))
    return sorted(found)


def read_runs(root: str | os.PathLike[str]) -> list[OfflineRun]:
    """One OfflineRun per .wandb file below `root`, oldest start first.

    A run resumed offline gets a new `offline-run-*` folder (and .wandb file) per
    `wandb.init`, all with the same run id; `merge_runs` joins them.
    """
    return sorted(
        map(read_run, find_wandb_files(root)), key=lambda r: (r.start_time, r.path)
    )


def merge_runs(runs: Sequence[OfflineRun]) -> dict[str, OfflineRun]:
    """Join the pieces of each run id, in the given (time) order: history is
    concatenated, config and summary updated, files and images united."""
    merged: dict[str, OfflineRun] = {}
    for part in runs:
        run = merged.get(part.run_id)
        if run is None:
            merged[part.run_id] = copy.deepcopy(part)
            continue
        run.config.update(part.config)
        run.summary.update(part.summary)
        run.history += part.history
        run.files += [f for f in part.files if f not in run.files]
        run.images += [k for k in part.images if k not in run.images]
        run.project, run.group = part.project or run.project, part.group or run.group
        run.name = part.name or run.name
    return merged
