"""Rank-0 output: metrics.jsonl, Weights & Biases, and the console.

Other ranks get `NullMonitor`, whose methods do nothing, so the loop never asks who it is.
Records are ordered by (step, kind); after a resume, records the run already holds are
not written again, so metrics.jsonl and the W&B run see steps that only increase,
nothing dropped and nothing duplicated (a resumed run recomputes the same values).
A record goes to metrics.jsonl first, then to W&B. wandb-core holds its log in memory
until a 32 KiB block fills, so a killed process loses the newest W&B records; a resumed
run logs again, from metrics.jsonl, the records W&B does not hold.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ae_dist.config import WandbConfig

KIND_ORDER = {"train": 0, "epoch": 1}


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
            self.last = _key(records[-1])
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run's lifetime)

    def is_new(self, record: dict[str, Any]) -> bool:
        return _key(record) > self.last

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        self.last = _key(record)

    def close(self) -> None:
        self.fh.close()


def _key(record: dict[str, Any]) -> tuple[int, int]:
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


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def wandb_mode(configured: str) -> str:
    """wandb.mode if set, else WANDB_MODE, else online when credentials exist, else offline."""
    if configured:
        return configured
    from_env = ENV_MODES.get(os.environ.get("WANDB_MODE", "").strip().lower())
    if from_env:
        return from_env
    return "online" if has_wandb_credentials() else "offline"


WANDB_LOG_HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1 (little-endian), version 0
WANDB_LOG_BLOCK = 32768
CHUNK = struct.Struct("<IHB")  # crc32 of type + data, length, type (full 1, first 2, middle 3, last 4)


def wandb_log_records(data: bytes, strict: bool = False) -> Iterator[bytes]:
    """The records of one .wandb file (a LevelDB log), up to its end or its first bad chunk.

    A tail cut short by a live or killed writer ends the records; with ``strict``, a bad header,
    checksum or chunk order raises ValueError instead.
    """
    def bad(what: str) -> Iterator[bytes]:
        if strict:
            raise ValueError(what)
        return iter(())

    if not data.startswith(WANDB_LOG_HEADER):
        yield from bad(f"not a W&B log (header {data[:7]!r})")
        return
    pos, parts = len(WANDB_LOG_HEADER), []
    while True:
        if WANDB_LOG_BLOCK - pos % WANDB_LOG_BLOCK < CHUNK.size:  # zero padding at a block's end
            pos += WANDB_LOG_BLOCK - pos % WANDB_LOG_BLOCK
        if pos + CHUNK.size > len(data):
            return
        crc, length, kind = CHUNK.unpack_from(data, pos)
        chunk = data[pos + CHUNK.size: pos + CHUNK.size + length]
        at, pos = pos, pos + CHUNK.size + length
        if len(chunk) < length:
            return
        if zlib.crc32(bytes([kind]) + chunk) != crc:
            yield from bad(f"bad checksum at byte {at}")
            return
        if kind not in (1, 2, 3, 4) or (kind in (3, 4) and not parts):
            yield from bad(f"unexpected chunk type {kind} at byte {at}")
            return
        parts = [chunk] if kind in (1, 2) else [*parts, chunk]
        if kind in (1, 4):
            yield b"".join(parts)
            parts = []


def offline_logged_through(wandb_dir: Path, run_id: str) -> tuple[int, int]:
    """(step, kind) of the newest record that the run's offline W&B logs hold on disk."""
    from wandb.proto.wandb_internal_pb2 import Record

    last = (-1, -1)
    for path in wandb_dir.glob(f"offline-run-*/run-{run_id}.wandb"):
        for payload in wandb_log_records(path.read_bytes()):
            record = Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "history":
                sections = {(item.nested_key[0] if item.nested_key else item.key).split("/")[0]
                            for item in record.history.item}
                kind = max((KIND_ORDER[s] for s in sections if s in KIND_ORDER), default=-1)
                last = max(last, (record.history.step.num, kind))
    return last


def run_group_and_name(cfg: WandbConfig, run_dir: Path) -> tuple[str | None, str]:
    """Group by SLURM job (array) or torchrun run id; name after the run folder."""
    env = os.environ
    job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    group = cfg.group or (f"slurm-{job}" if job else None)
    if not group and env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        group = f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    task = env.get("SLURM_ARRAY_TASK_ID")
    name = cfg.name or run_dir.resolve().name + (f"-{job}" if job else "") + (f"-{task}" if task else "")
    return group, name


class WandbRun:
    def __init__(self, cfg: WandbConfig, mode: str, run_dir: Path, run_id: str, config: dict[str, Any]):
        import wandb

        group, name = run_group_and_name(cfg, run_dir)
        self.wandb = wandb
        holds = offline_logged_through(run_dir / "wandb", run_id) if mode == "offline" else None
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, group=group, name=name, id=run_id,
            resume="allow", config=config, dir=str(run_dir), mode=mode,
            # No console capture, system stats, environment record (it holds argv and every SLURM_*
            # variable) or package list: the run folder and W&B get metrics, config and images only.
            settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, disable_git=True,
                                    save_code=False, x_save_requirements=False, silent=True),
        )
        # What this W&B run already holds: a resumed online run continues at the server's step.
        self.logged_through = holds if holds is not None else (self.run.step - 1, max(KIND_ORDER.values()))
        if mode == "offline":
            print(f"W&B: offline run {run_id} in {self.run.dir.rsplit('/files', 1)[0]}; "
                  f"upload it with: wandb sync {run_dir}/wandb/offline-run-*", file=sys.stderr, flush=True)

    def log(self, record: dict[str, Any], images: dict[str, Path]) -> None:
        data = {f"{record['kind']}/{k}": v for k, v in record.items() if k not in ("kind", "step")}
        data.update({key: self.wandb.Image(str(path)) for key, path in images.items()})
        self.run.log(data, step=record["step"])

    def log_missing(self, records: list[dict[str, Any]]) -> None:
        """Log again the records a killed run wrote to metrics.jsonl but never got into W&B."""
        missing = [r for r in records if _key(r) > self.logged_through]
        for record in missing:
            self.log(record, {})
        if missing:
            print(f"W&B: logged {len(missing)} records again (steps {missing[0]['step']}-{missing[-1]['step']}) "
                  f"that a stopped run had not saved", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.run.finish()


class Monitor:
    """Rank 0: writes each new record to metrics.jsonl, W&B and the console."""

    def __init__(self, run_dir: Path, wandb_cfg: WandbConfig, run_id: str, config: dict[str, Any], epochs: int):
        self.metrics = MetricsFile(run_dir / "metrics.jsonl")
        self.epochs = epochs
        mode = wandb_mode(wandb_cfg.mode)
        self.wandb = WandbRun(wandb_cfg, mode, run_dir, run_id, config) if mode != "disabled" else None
        if self.wandb is not None:
            self.wandb.log_missing(read_metrics(self.metrics.path))

    def log(self, record: dict[str, Any], images: dict[str, Path] | None = None) -> None:
        if not self.metrics.is_new(record):
            return
        self.metrics.write(record)  # first: W&B then never holds a record that metrics.jsonl lacks
        if self.wandb is not None:
            self.wandb.log(record, images or {})

    def epoch_line(self, record: dict[str, Any]) -> None:
        print(f"epoch {record['epoch']}/{self.epochs}, loss: {record['train_loss']:.4f}, "
              f"test loss: {record['test_loss']:.4f}, {record['samples_per_s']:,.0f} samples/s", flush=True)

    def message(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        self.metrics.close()
        if self.wandb is not None:
            self.wandb.close()


class NullMonitor:
    """What ranks other than 0 get: every method does nothing."""

    def log(self, record: dict[str, Any], images: dict[str, Path] | None = None) -> None: ...
    def epoch_line(self, record: dict[str, Any]) -> None: ...
    def message(self, line: str) -> None: ...
    def close(self) -> None: ...


class Progress:
    """A tqdm bar on a terminal; a plain line every `every` steps otherwise (SLURM logs)."""

    def __init__(self, mode: str, total: int, enabled: bool, every: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "off"
        self.every, self.total = every, total
        self.bar = None
        self.started = time.perf_counter()
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def start_at(self, step: int) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def update(self, step: int, epoch: int, loss: float | None) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", refresh=False)
        elif self.mode == "lines" and loss is not None and math.isfinite(loss):
            print(f"step {step}/{self.total} epoch {epoch} loss {loss:.4f} "
                  f"({time.perf_counter() - self.started:.0f}s)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
