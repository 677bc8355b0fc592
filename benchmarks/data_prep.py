"""Prepared data: preparation speed, memory-mapped training, memory per rank, data larger than memory, start-up.

    python -m benchmarks.data_prep --work /var/tmp/ae-bench                 # every part
    python -m benchmarks.data_prep --work /var/tmp/ae-bench --only prep,train

Parts (ratios side by side in one run):
- prep:   >= 20,000 64x64 JPEG/PNG tiles of scikit-learn's photographs, prepared by
          `torchrun --nproc_per_node=2 -m ae_dist.prepare` (data.size=32,32, 3 channels) against a
          bare PIL open+decode+convert+resize loop over the same files in 2 processes.
- train:  the seed's mlp, batch 64, 1 process: images memory-mapped from a prepared array against
          the same images in RAM (samples/s, alternated, best of 3 each).
- memory: RssAnon of a training process at 60k and at 10M images (a synthetic uint8 .npy, 7.8 GB):
          the growth should stay under 8 bytes x N + 32 MB.
- cgroup: a dataset 3x larger than a cgroup v1 memory limit (page cache charged) trains one epoch
          to its end; samples/s next to the same run without the limit (in cache).
- start:  time to the first step (``--dry-run``: data, model, two steps) at 10M images against 60k.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
CGROUP = Path("/sys/fs/cgroup/memory")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def make_tiles(folder: Path, count: int) -> Path:
    """``count`` 64x64 tiles, half JPEG, half PNG, in 10 class folders."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    if folder.with_suffix(".complete").exists():
        return folder
    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % 2]
        top, left = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
        tile = Image.fromarray(photo[top:top + 64, left:left + 64])
        target = folder / f"class{i % 10}"
        target.mkdir(parents=True, exist_ok=True)
        tile.save(target / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    folder.with_suffix(".complete").touch()
    return folder


def bare_worker(paths: list[str]) -> int:
    from PIL import Image

    for path in paths:
        with Image.open(path) as image:
            np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    return len(paths)


def part_prep(work: Path, count: int) -> dict:
    from multiprocessing import Pool

    folder = make_tiles(work / "tiles", count)
    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in paths:  # page cache warm for both
        Path(path).read_bytes()
    start = time.perf_counter()
    with Pool(2) as pool:
        done = sum(pool.map(bare_worker, [paths[0::2], paths[1::2]]))
    bare = time.perf_counter() - start
    cache = work / f"prep-cache-{time.time_ns()}"
    start = time.perf_counter()
    result = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ae_dist.prepare",
                             "data.name=folder", f"data.path={folder}", f"data.cache_dir={cache}", "data.size=32,32",
                             "data.channels=3"], env=env(), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-2000:]
    line = [ln for ln in result.stdout.splitlines() if re.match(r"^\d+ images, \d+ skipped", ln)][-1]
    seconds = float(re.search(r"([\d.]+) seconds", line).group(1))
    return {"files": done, "bare_pil_2proc_s": round(bare, 2), "prepare_2ranks_s": seconds,
            "prepare_2ranks_wall_s_with_startup": round(wall, 2), "ratio_prepare_vs_bare": round(bare / seconds, 2),
            "final_line": line}


def synthetic_npy(path: Path, count: int, shape=(1, 28, 28)) -> Path:
    """A uint8 (count, *shape) .npy written in chunks (the blob images of ae_dist.data.synthetic)."""
    if path.exists() and path.with_suffix(".complete").exists():
        return path
    from ae_dist.data import synthetic_split

    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, *shape))
    block = synthetic_split(min(count, 100_000), seed=0).images.numpy()
    rows = int(np.prod(shape))
    for start in range(0, count, len(block)):
        stop = min(count, start + len(block))
        chunk = block[: stop - start].reshape(stop - start, -1)
        array[start:stop] = np.resize(chunk, (stop - start, rows)).reshape(stop - start, *shape)
    array.flush()
    del array
    path.with_suffix(".complete").touch()
    return path


def part_train(work: Path) -> dict:
    import torch

    from ae_dist.config import ModelConfig
    from ae_dist.data import EpochBatches, Split
    from ae_dist.models import build_model

    torch.set_num_threads(1)
    path = synthetic_npy(work / "train60k.npy", 60_000)
    mapped = torch.from_numpy(np.load(path, mmap_mode="c"))
    labels = torch.zeros(len(mapped), dtype=torch.int64)
    splits = {"memmap": Split(mapped, labels), "in_ram": Split(mapped.clone(), labels)}
    best = {name: 0.0 for name in splits}
    for _ in range(3):
        for name, split in splits.items():
            torch.manual_seed(0)
            model = build_model(ModelConfig(), (1, 28, 28))
            optimizer = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5)
            batches = EpochBatches(split, 64, 0, 1, 0)
            start, steps = time.perf_counter(), 0
            for images in batches.epoch(0):
                loss = torch.nn.functional.mse_loss(model(images), images)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                if steps == 300:
                    break
            best[name] = max(best[name], steps * 64 / (time.perf_counter() - start))
    return {"samples_per_s": {k: round(v) for k, v in best.items()},
            "ratio_memmap_vs_ram": round(best["memmap"] / best["in_ram"], 3)}


PROBE = r"""
import sys, json, numpy as np, torch
from ae_dist.config import DataConfig
from ae_dist.data import EpochBatches, load_split
from ae_dist.dist.group import DistInfo
from ae_dist.prepare import prepare
def anon():
    return int([l for l in open('/proc/self/status') if l.startswith('RssAnon')][0].split()[1]) * 1024
cfg = DataConfig(name='array', path=sys.argv[1], test_path=sys.argv[2], cache_dir=sys.argv[3])
prepare(cfg, DistInfo(0, 0, 1, 1, torch.device('cpu'), None), say=lambda line: None)
before = anon()
split = load_split(cfg, 'train')
batches = EpochBatches(split, 64, 0, 1, 0)
for k, images in enumerate(batches.epoch(0)):  # measured mid-epoch: the epoch's indices are held
    if k == 200:
        during = anon()
        break
print(json.dumps({'images': len(split), 'rss_anon_before': before, 'rss_anon_after': during}))
"""


def part_memory(work: Path, big: int) -> dict:
    small_test = synthetic_npy(work / "test1k.npy", 1000)
    out = {}
    for name, count in (("60k", 60_000), ("big", big)):
        path = synthetic_npy(work / f"train{count}.npy", count)
        result = subprocess.run([PY, "-c", PROBE, str(path), str(small_test), str(work / "mem-cache")], env=env(),
                                capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, result.stderr[-2000:]
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])
    growth = out["big"]["rss_anon_after"] - out["60k"]["rss_anon_after"]
    allowed = 8 * (out["big"]["images"] - out["60k"]["images"]) + 32 * 2**20
    return {**out, "growth_bytes": growth, "allowed_bytes": allowed, "within": growth <= allowed}


def cached(path: Path, keep: bool) -> None:
    """Read ``path`` into the page cache (keep) or drop its pages from it (a page already cached stays charged to
    the cgroup that first read it, so a limited run over cached data would not be limited)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if keep:
            while os.read(fd, 1 << 24):
                pass
        else:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def part_cgroup(work: Path, limit_mb: int) -> dict:
    if not CGROUP.is_dir():
        return {"skipped": "no cgroup v1 memory controller"}
    count = limit_mb * 3 * 2**20 // (3 * 32 * 32) + 1  # 3x the limit of 3x32x32 images
    data = synthetic_npy(work / f"cg{count}.npy", count, (3, 32, 32))
    test = synthetic_npy(work / "cgtest.npy", 1000, (3, 32, 32))
    args = [PY, "-m", "ae_dist.train", "data.name=array", f"data.path={data}", f"data.test_path={test}",
            f"data.cache_dir={work / 'cg-cache'}", "train.epochs=1", "train.batch_size=256", "train.log_every=1000",
            "train.eval_batch_size=500", "checkpoint.every_steps=0", "wandb.mode=disabled", "run.progress=lines",
            "train.threads=1"]
    subprocess.run([*args, f"run.dir={work / 'cg-prep'}", "train.max_steps=1"], env=env(), capture_output=True, cwd=REPO)
    group = CGROUP / f"ae-dist-bench-{os.getpid()}"
    group.mkdir()
    out = {"dataset_gb": round(data.stat().st_size / 1e9, 2), "limit_mb": limit_mb}
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
        for name, limited in (("in_cache", False), ("limited", True)):
            shutil.rmtree(work / f"cg-{name}", ignore_errors=True)  # a fresh run each time, not a finished one
            cached(data, not limited)  # the limited run faults every page in itself: charged to its cgroup
            pre = f"echo $$ > {group}/cgroup.procs; exec " if limited else "exec "
            start = time.perf_counter()
            result = subprocess.run(["sh", "-c", pre + " ".join(f"'{a}'" for a in [*args, f"run.dir={work / ('cg-' + name)}"])],
                                    env=env(), capture_output=True, text=True, cwd=REPO)
            seconds = time.perf_counter() - start
            line = [ln for ln in result.stdout.splitlines() if "samples/s" in ln]
            out[name] = {"exit": result.returncode, "seconds": round(seconds, 1), "epoch_line": line[-1] if line else
                         result.stderr[-300:]}
        out["max_usage_mb"] = int((group / "memory.max_usage_in_bytes").read_text()) // 2**20
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            (CGROUP / "cgroup.procs").write_text(pid)
        group.rmdir()
    return out


def part_start(work: Path, big: int) -> dict:
    small_test = synthetic_npy(work / "test1k.npy", 1000)
    out = {}
    for name, count in (("60k", 60_000), ("big", big)):
        path = synthetic_npy(work / f"train{count}.npy", count)
        args = [PY, "-m", "ae_dist.train", "data.name=array", f"data.path={path}", f"data.test_path={small_test}",
                f"data.cache_dir={work / 'start-cache'}", f"run.dir={work / 'start-run'}", "--dry-run"]
        subprocess.run(args, env=env(), capture_output=True, cwd=REPO)  # prepares (digest of the array) once
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            result = subprocess.run(args, env=env(), capture_output=True, text=True, cwd=REPO)
            assert result.returncode == 0, result.stderr[-2000:]
            best = min(best, time.perf_counter() - start)
        out[name] = round(best, 2)
    out["extra_s"] = round(out["big"] - out["60k"], 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (about 8 GB with --big 10000000)")
    parser.add_argument("--only", default="prep,train,memory,cgroup,start")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--big", type=int, default=10_000_000)
    parser.add_argument("--limit-mb", type=int, default=1024)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    parts = {"prep": lambda: part_prep(args.work, args.files), "train": lambda: part_train(args.work),
             "memory": lambda: part_memory(args.work, args.big), "cgroup": lambda: part_cgroup(args.work, args.limit_mb),
             "start": lambda: part_start(args.work, args.big)}
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    for name in args.only.split(","):
        print(json.dumps({name: parts[name]()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
