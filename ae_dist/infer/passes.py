"""The encode pass over one split: latent code, per-sample error, label and index of every row, in order.

Every rank calls `encode_split`. Rank 0 decides (`ae_dist.run.agree.on_rank0`): it refuses an
output folder that holds another run's, weights' or dataset's results (unless ``overwrite``),
takes the folder's lease (one writer: a second encode into it stops with exit 2), allocates
the files and lists the chunks still to do; every rank then takes every W-th of those chunks,
writes its rows straight into the files and, every SYNC_EVERY_S seconds (and before it stops), syncs them and
records the chunks they complete. Between chunks the
ranks agree on stop signals (one tiny non-blocking all-reduce per chunk, none per batch: they stop together one
chunk after the signal). Rank 0 writes the
manifest once every chunk is recorded.

The per-sample error is the mean squared error of the sample's reconstruction over its pixels:
the test loss is the mean of these errors.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ae_dist.config import Config, to_dict
from ae_dist.data import Split
from ae_dist.dist.group import DistInfo, barrier
from ae_dist.dist.preemption import AgreedStop, StopSignals
from ae_dist.errors import DiskFull, UsageError
from ae_dist.infer.chunks import Chunks, Record, assign
from ae_dist.infer.load import Weights
from ae_dist.infer.outputs import MANIFEST, PLAN, Array, Outputs, read_json, write_json
from ae_dist.run.agree import on_rank0
from ae_dist.run.lease import Lease, read_holder

CHUNK_ROWS = 4096  # default rows per chunk: the unit of work, of resumption and of a stop's delay
SYNC_EVERY_S = 2.0  # finished chunks are synced and recorded together at most this often: a kill loses at most that
DIGEST_ROWS = 64  # images hashed (evenly spaced) into the data digest, with every label
OURS = {MANIFEST, PLAN, ".lease", "codes.npy", "errors.npy", "labels.npy", "index.npy", "latent.png", ".chunks"}


@dataclass(frozen=True)
class Request:
    """One split to encode into one folder."""

    part: str  # train | val | test
    folder: Path
    chunk_rows: int = CHUNK_ROWS
    batch_size: int = 1000
    overwrite: bool = False
    lease_stale_s: float = 60.0


@dataclass(frozen=True)
class Result:
    manifest: dict[str, Any] | None  # None when stopped
    signal: int = 0
    computed: int = 0  # rows computed by this start (all ranks)
    seconds: float = 0.0


def arrays(latent_dim: int) -> list[Array]:
    return [Array("codes", "<f4", (latent_dim,)), Array("errors", "<f4"), Array("labels", "<i8"), Array("index", "<i8")]


def data_digest(config: Config, split: Split) -> str:
    """The dataset's identity in a manifest: its config, its shape, every label and a sample of its images."""
    h = hashlib.sha256(repr((sorted(to_dict(config)["data"].items()), tuple(split.images.shape))).encode())
    h.update(np.ascontiguousarray(split.labels.numpy()).tobytes())
    if len(split):
        rows = np.unique(np.linspace(0, len(split) - 1, min(DIGEST_ROWS, len(split))).astype(np.int64))
        h.update(np.ascontiguousarray(split.images[torch.from_numpy(rows)].numpy()).tobytes())
    return h.hexdigest()


def plan_of(run: Path, config: Config, weights: Weights, request: Request, split: Split, latent_dim: int) -> dict[str, Any]:
    return {"kind": "encode", "run": str(Path(run).resolve()), "weights": weights.choice, "weights_source": weights.source,
            "weights_sha256": weights.digest(), "data_digest": data_digest(config, split), "data": to_dict(config)["data"],
            "split": request.part, "count": len(split), "image_shape": list(split.images.shape[1:]),
            "latent_dim": latent_dim, "chunk_rows": request.chunk_rows, "batch_size": request.batch_size}


def _differs(saved: dict[str, Any], plan: dict[str, Any]) -> str:
    for key in ("run", "weights_sha256", "data_digest", "split", "count", "latent_dim", "chunk_rows", "batch_size"):
        if saved.get(key) != plan[key]:
            return key
    return ""


def _refuse(folder: Path, what: str) -> UsageError:
    return UsageError(f"output folder holds {what}", str(folder), "choose another --out, or add --overwrite to replace it")


def prepare(request: Request, plan: dict[str, Any], outputs: Outputs, chunks: Chunks) -> dict[str, Any]:
    """Rank 0: refuse a foreign folder, take its lease, allocate, list the pending chunks (or say it is complete)."""
    folder, record = request.folder, Record(request.folder)
    if folder.is_dir():
        saved = read_json(folder / MANIFEST) or read_json(folder / PLAN)
        strangers = sorted(p.name for p in folder.iterdir() if p.name not in OURS and not p.name.startswith(".lease"))
        if saved is None and strangers:
            raise UsageError(f"output folder is not empty and holds no encode output ({strangers[0][:60]}, ...)",
                             str(folder), "give an empty or new folder to --out")
    lease = Lease(folder, request.lease_stale_s)
    try:
        lease.take()
    except UsageError:
        holder = read_holder(folder)
        raise UsageError(f"output folder is in use by {holder.describe() if holder else 'another encode'}", str(folder),
                         "wait for it, stop it, or choose another --out") from None
    try:
        complete, saved = read_json(folder / MANIFEST), read_json(folder / PLAN)
        for found in (complete, saved):
            if found is not None and _differs(found, plan):
                key = _differs(found, plan)
                if not request.overwrite:
                    raise _refuse(folder, f"other results ({key} {str(found.get(key))[:40]!r}, this command's "
                                          f"{str(plan[key])[:40]!r})")
                complete = saved = None
                for name in (MANIFEST, PLAN):
                    (folder / name).unlink(missing_ok=True)
                outputs.remove()
                record.clear()
        if complete is not None and not request.overwrite:
            lease.release()
            return {"complete": complete}
        (folder / MANIFEST).unlink(missing_ok=True)
        if saved is None or request.overwrite:
            record.clear()
            outputs.remove()
        write_json(folder / PLAN, plan)
        outputs.create()
    except BaseException:
        lease.release()
        raise
    return {"pending": record.pending(chunks), "lease": lease}


@torch.no_grad()
def encode_rows(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Codes and per-sample mean squared errors of uint8 ``images``, in batches of ``batch_size``."""
    codes, errors = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float().div_(255)
        z = model.encode(x)
        errors.append(F.mse_loss(model.decode(z).float(), x, reduction="none").flatten(1).mean(1).cpu())
        codes.append(z.float().cpu())
    return torch.cat(codes).numpy(), torch.cat(errors).numpy()


def encode_split(model: torch.nn.Module, run: Path, config: Config, weights: Weights, request: Request, split: Split,
                 info: DistInfo, stop: StopSignals, say=print) -> Result:
    """Encode ``split`` into ``request.folder``, resuming what an earlier start recorded; every rank calls this."""
    model.eval()
    latent_dim = int(model.encode(split.images[:1].float().div_(255).to(info.device)).shape[1]) if len(split) else 0
    chunks = Chunks(len(split), request.chunk_rows)
    outputs = Outputs(request.folder, len(split), arrays(latent_dim))
    plan = plan_of(run, config, weights, request, split, latent_dim) if info.is_main else {}
    holder: dict[str, Any] = {}

    def decide() -> dict[str, Any]:
        try:
            answer = prepare(request, plan, outputs, chunks)
        except OSError as err:
            raise DiskFull(f"cannot write {err.filename or request.folder}: {err.strerror}", str(request.folder),
                           "free space (or choose another --out), then run the same command to continue") from None
        holder["lease"] = answer.pop("lease", None)
        return answer

    answer = on_rank0(info, decide)
    if "complete" in answer:
        return Result(answer["complete"])
    lease, started, computed, stopped = holder.get("lease"), time.perf_counter(), 0, 0
    try:
        pending = answer["pending"]
        say(f"encode {request.part}: {len(split)} samples in {len(chunks)} chunks, {len(chunks) - len(pending)} done before; "
            f"{info.world_size} rank(s) -> {request.folder}")
        record = Record(request.folder)
        outputs.open()
        try:
            rounds, unsynced, synced_at = assign(pending, info.rank, info.world_size), [], time.monotonic()
            agree = AgreedStop(stop, info)
            for round_number, i in enumerate(rounds, 1):
                if i is not None:
                    start, end = chunks.bounds(i)
                    codes, errors = encode_rows(model, split.images[start:end], request.batch_size, info.device)
                    outputs.write_rows(start, {"codes": codes, "errors": errors, "labels": split.labels[start:end].numpy(),
                                               "index": np.arange(start, end, dtype=np.int64)})
                    unsynced.append(i)
                    computed += end - start
                stopped = agree()
                last = stopped or round_number == len(rounds)
                if unsynced and (last or time.monotonic() - synced_at >= SYNC_EVERY_S):
                    outputs.sync()  # rows on disk first, then the records that say so
                    for done in unsynced:
                        record.mark(done)
                    unsynced, synced_at = [], time.monotonic()
                if stopped:
                    break
                if info.is_main and config.run.progress != "off":
                    say(f"  chunk round {round_number}/{len(rounds)} "
                        f"({computed * info.world_size / max(time.perf_counter() - started, 1e-9):.0f} samples/s)")
            agree.close()
        except OSError as err:
            raise DiskFull(f"cannot write {err.filename or request.folder}: {err.strerror}", str(request.folder),
                           "free space, then run the same command to continue: finished chunks are kept") from None
        finally:
            outputs.close()
        seconds = time.perf_counter() - started
        if stopped:
            return Result(None, stopped, computed * info.world_size, seconds)
        barrier(info)
        manifest = None
        if info.is_main:
            missing = Record(request.folder).pending(chunks)
            if missing:
                raise UsageError(f"chunks {missing[:5]} of the output were not recorded by any rank", str(request.folder),
                                 "run the same command again to finish them")
            manifest = {**plan, "files": {a: outputs.path(a).name for a in outputs.arrays}}
            try:
                write_json(request.folder / MANIFEST, manifest)
            except OSError as err:
                raise DiskFull(f"cannot write {request.folder / MANIFEST}: {err.strerror}", str(request.folder),
                               "free space, then run the same command to finish") from None
            record.clear()
            (request.folder / PLAN).unlink(missing_ok=True)
        return Result(manifest, 0, computed * info.world_size, seconds)
    finally:
        if lease is not None:
            lease.release()
