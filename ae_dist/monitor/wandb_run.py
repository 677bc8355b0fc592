"""Weights & Biases for rank 0: the mode, the run, and what an offline run already holds.

W&B never stops training: a server that does not answer within INIT_TIMEOUT_S (a compute
node without internet) gives one line and an offline run with its `wandb sync` command, and
any later W&B failure (log, alert, artifact, finish) gives one line and turns W&B off for the
rest of the run; metrics.jsonl keeps every record either way. Only `wandb.mode=online`
without credentials is refused, before any work (`check_credentials`).

wandb-core holds its log in memory until a 32 KiB block fills, so a killed process loses
the newest W&B records; a resumed run logs again, from metrics.jsonl, the records W&B does
not hold (`WandbRun.log_missing`), reading the offline ``.wandb`` file (a LevelDB log of
``wandb_internal_pb2.Record`` protobufs) to know where it stands.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import netrc
import os
import ssl
import struct
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ae_dist.config import WandbConfig
from ae_dist.errors import UsageError
from ae_dist.run.folder import RunDir, git_state
from ae_dist.run.identity import wandb_group, wandb_name
from ae_dist.run.metrics import KIND_ORDER, record_key

PROBE_TIMEOUT_S = 5.0  # one HTTP request to the W&B server before wandb.init tries it ...
INIT_TIMEOUT_S = 15.0  # ... then wandb.init's own bound: offline after at most about 20 s in all


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


def check_credentials(cfg: WandbConfig) -> None:
    """``wandb.mode=online`` (or WANDB_MODE=online) without credentials: a usage error, before any work."""
    if wandb_mode(cfg.mode) == "online" and not has_wandb_credentials():
        where = "wandb.mode" if cfg.mode else "WANDB_MODE"
        raise UsageError("W&B is set online but no W&B credentials are configured", where,
                         "run `wandb login` or set WANDB_API_KEY, or use wandb.mode=offline (upload later with wandb sync)")


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")


def unreachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Why the W&B server at ``url`` cannot be reached (refused, no route, no name, silent), or "" when it answers."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return ""  # it answered
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLError):
            return ""  # a TLS set-up that wandb may handle (its own CA settings): let wandb.init try
        return str(getattr(err.reason, "strerror", None) or err.reason)
    except (OSError, ValueError) as err:  # a timeout, a reset, a malformed URL
        return str(getattr(err, "strerror", None) or err) or err.__class__.__name__
    return ""


def job_facts(hosts: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Where and what runs, for the W&B config: world size, nodes, SLURM and torchrun ids, code version."""
    env = os.environ if env is None else env
    sha, dirty = git_state()
    torchrun_id = env.get("TORCHELASTIC_RUN_ID", "")
    return {"world_size": len(hosts), "nodes": list(dict.fromkeys(hosts)),
            "slurm_job_id": env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID", ""),
            "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID", ""),
            "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
            "torchrun_run_id": "" if torchrun_id == "none" else torchrun_id, "git_sha": sha, "git_dirty": dirty}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    """Rank 0's W&B run. Every call after ``__init__`` is guarded: a W&B failure never stops training."""

    def __init__(self, cfg: WandbConfig, mode: str, run_dir: RunDir, run_id: str, config: dict[str, Any]):
        import wandb

        logging.raiseExceptions = False  # W&B's own log file on a full disk prints no traceback: our error line says it
        self.wandb, self.cfg, self.run_dir, self.run_id, self.config = wandb, cfg, run_dir, run_id, config
        self.run: Any = None
        if mode == "online":
            reason = unreachable(base_url())
            if not reason:
                try:
                    self.run = self._init("online")
                except Exception as err:  # noqa: BLE001 (wandb raises CommError, UsageError, ServerResponseError...)
                    reason = one_line(err)
                    with contextlib.suppress(Exception):
                        wandb.teardown()  # the failed attempt holds the run id in wandb-core; a fresh one takes it
            if reason:
                warn(f"W&B: cannot reach {base_url()} ({reason}); continuing offline")
                mode = "offline"
        if mode == "offline":
            try:
                self.run = self._init("offline")
            except Exception as err:  # noqa: BLE001
                warn(f"W&B: cannot start an offline run ({one_line(err)}); W&B is off for this run, "
                     "metrics.jsonl keeps every record")
        self.mode = mode
        if self.run is None:
            self.logged_through = (-1, -1)
            return
        holds = self._offline_holds() if mode == "offline" else None
        # What this W&B run already holds: a resumed online run continues at the server's step.
        self.logged_through = holds if holds is not None else (self.run.step - 1, max(KIND_ORDER.values()))
        self._call("define_metric", self.run.define_metric, "epoch/*", step_metric="epoch/epoch")
        if mode == "offline":
            where = {"wandb_sync": f"wandb sync {run_dir.wandb.resolve()}/offline-run-*"}
            warn(f"W&B: offline run {run_id} in {self.run.dir.rsplit('/files', 1)[0]}; "
                 f"upload it with: {where['wandb_sync']}")
        else:
            where = {"wandb_url": self.run.url or ""}
            warn(f"W&B: {where['wandb_url']}")
        run_dir.write_info(**where)

    def _offline_holds(self) -> tuple[int, int]:
        """What the run's offline files hold, read from wandb's private record format (guarded like every
        W&B call: an import or decode error means nothing is logged again, in one line)."""
        try:
            return offline_logged_through(self.run_dir.wandb, self.run_id)
        except Exception as err:  # noqa: BLE001 (wandb.proto missing or changed, a file that does not decode)
            warn(f"W&B: cannot read what the offline run {self.run_id} holds ({one_line(err)}); records a stopped "
                 "run had not saved are not logged again (metrics.jsonl has them all)")
            return (sys.maxsize, sys.maxsize)

    def _init(self, mode: str) -> Any:
        wandb, cfg = self.wandb, self.cfg
        return wandb.init(
            project=cfg.project, entity=cfg.entity or None, group=wandb_group(cfg.group) or None,
            name=wandb_name(cfg.name, self.run_dir.root), id=self.run_id, resume="allow", config=self.config,
            dir=str(self.run_dir.root), mode=mode, tags=list(cfg.tags) or None, notes=cfg.notes or None,
            job_type=cfg.job_type or None,
            # No console capture, environment record (it holds argv and every SLURM_* variable), code or package
            # list: the run folder and W&B get metrics, config, images, artifacts and W&B's system metrics only.
            settings=wandb.Settings(console="off", x_disable_stats=not cfg.system_metrics, x_disable_meta=True,
                                    disable_git=True, save_code=False, x_save_requirements=False, quiet=True,
                                    init_timeout=INIT_TIMEOUT_S),
        )

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``; on any exception one line, and W&B off for the rest of the run."""
        if self.run is None:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (whatever W&B raises, training goes on)
            warn(f"W&B: {what} failed ({one_line(err)}); W&B is off for the rest of this run, "
                 "metrics.jsonl keeps every record")
            self.run = None
            return None

    def log(self, record: dict[str, Any], images: dict[str, Path], extra: dict[str, Any] | None = None) -> None:
        def log() -> None:
            data = {f"{record['kind']}/{k}": v for k, v in record.items() if k not in ("kind", "step")}
            data.update({key: self.wandb.Image(str(path)) for key, path in images.items()})
            self.run.log(data | (extra or {}), step=record["step"])

        self._call("log", log)

    def summarize(self, values: dict[str, Any]) -> None:
        self._call("summary", lambda: self.run.summary.update(values))

    def alert(self, title: str, text: str) -> None:
        self._call("alert", lambda: self.run.alert(title=title, text=text, level=self.wandb.AlertLevel.WARN))

    def log_file(self, path: Path, kind: str, aliases: list[str], metadata: dict[str, Any], upload: bool) -> None:
        """``path`` as the newest version of this run's ``kind`` artifact: a copy, or a reference to the file."""
        def log() -> None:
            artifact = self.wandb.Artifact(f"{kind}-{self.run_id}", type=kind, metadata=metadata)
            if upload:
                artifact.add_file(str(path), name=path.name)
            else:
                artifact.add_reference(path.resolve().as_uri(), name=path.name)
            self.run.log_artifact(artifact, aliases=aliases)

        self._call(f"{kind} artifact", log)

    def log_missing(self, records: list[dict[str, Any]]) -> None:
        """Log again the records a killed run wrote to metrics.jsonl but never got into W&B."""
        missing = [r for r in records if record_key(r) > self.logged_through]
        for record in missing:
            self.log(record, {})
        if missing and self.run is not None:
            warn(f"W&B: logged {len(missing)} records again (steps {missing[0]['step']}-{missing[-1]['step']}) "
                 f"that a stopped run had not saved")

    def close(self) -> None:
        self._call("finish", lambda: self.run.finish())
        self.run = None


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def one_line(err: BaseException) -> str:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{err.__class__.__name__}: {first[:200]}" if first else err.__class__.__name__
