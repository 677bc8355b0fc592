"""Weights & Biases for rank 0: the mode, the run, and what an offline run already holds.

wandb-core holds its log in memory until a 32 KiB block fills, so a killed process loses
the newest W&B records; a resumed run logs again, from metrics.jsonl, the records W&B does
not hold (`WandbRun.log_missing`), reading the offline ``.wandb`` file (a LevelDB log of
``wandb_internal_pb2.Record`` protobufs) to know where it stands.
"""

from __future__ import annotations

import logging
import netrc
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ae_dist.config import WandbConfig
from ae_dist.metrics import KIND_ORDER, record_key
from ae_dist.run_dir import RunDir, wandb_group, wandb_name


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


class WandbRun:
    def __init__(self, cfg: WandbConfig, mode: str, run_dir: RunDir, run_id: str, config: dict[str, Any]):
        import wandb

        logging.raiseExceptions = False  # W&B's own log file on a full disk prints no traceback: our error line says it
        self.wandb = wandb
        holds = offline_logged_through(run_dir.wandb, run_id) if mode == "offline" else None
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, group=wandb_group(cfg.group) or None,
            name=wandb_name(cfg.name, run_dir.root), id=run_id,
            resume="allow", config=config, dir=str(run_dir.root), mode=mode,
            # No console capture, system stats, environment record (it holds argv and every SLURM_*
            # variable) or package list: the run folder and W&B get metrics, config and images only.
            settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, disable_git=True,
                                    save_code=False, x_save_requirements=False, silent=True),
        )
        # What this W&B run already holds: a resumed online run continues at the server's step.
        self.logged_through = holds if holds is not None else (self.run.step - 1, max(KIND_ORDER.values()))
        if mode == "offline":
            print(f"W&B: offline run {run_id} in {self.run.dir.rsplit('/files', 1)[0]}; "
                  f"upload it with: wandb sync {run_dir.wandb}/offline-run-*", file=sys.stderr, flush=True)

    def log(self, record: dict[str, Any], images: dict[str, Path]) -> None:
        data = {f"{record['kind']}/{k}": v for k, v in record.items() if k not in ("kind", "step")}
        data.update({key: self.wandb.Image(str(path)) for key, path in images.items()})
        self.run.log(data, step=record["step"])

    def log_missing(self, records: list[dict[str, Any]]) -> None:
        """Log again the records a killed run wrote to metrics.jsonl but never got into W&B."""
        missing = [r for r in records if record_key(r) > self.logged_through]
        for record in missing:
            self.log(record, {})
        if missing:
            print(f"W&B: logged {len(missing)} records again (steps {missing[0]['step']}-{missing[-1]['step']}) "
                  f"that a stopped run had not saved", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.run.finish()
