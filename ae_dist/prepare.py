"""Prepare a dataset once, in parallel, before (or as the start of) a training: the same data.* keys.

    python -m ae_dist.prepare data.name=folder data.path=/shared/cells data.size=64,64 data.channels=3
    torchrun --nproc_per_node=4 -m ae_dist.prepare data.name=folder data.path=/shared/cells ...
    srun --ntasks=8 python -m ae_dist.prepare ...            # any launcher; python -m launch prepare ...

Rank 0 takes the preparation's lock (a second preparation of the same data waits for the first),
lists the source once and writes the row list and the preallocated arrays into a work folder;
every rank decodes its share of the rows into them; rank 0 closes the gaps of skipped files,
writes the manifest last and renames the folder into place (`ae_dist.data.prepared`). A kill at
any moment leaves only a ``.partial-*`` folder, which the next preparation deletes. A dataset
already prepared is reused: the trainer reads its manifest only; this command lists the folder
again and prepares anew when files changed. The last line: images, skipped, seconds, images/s.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from pathlib import Path

from ae_dist.config import Config, DataConfig, cli
from ae_dist.errors import UsageError, reporting

NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/scratch/local", "/local")
WAIT_POLL_S = 0.5
LOCK_STALE_S = 60.0
_PENDING: dict = {}  # rank 0: the lease, labels and manifest base of the preparation under way


def node_local(path: Path) -> bool:
    """A folder that only one node sees: /tmp, /dev/shm, $TMPDIR, $SLURM_TMPDIR and the like."""
    roots = [*NODE_LOCAL, *(os.environ[key] for key in ("TMPDIR", "SLURM_TMPDIR") if os.environ.get(key))]
    resolved = str(path.expanduser().absolute())
    return any(resolved == root.rstrip("/") or resolved.startswith(root.rstrip("/") + "/") for root in roots)


def check_cache_dir(cfg: DataConfig, nodes_share_it: bool) -> None:
    cache = Path(cfg.cache_dir).expanduser().absolute()
    if nodes_share_it and node_local(cache):
        raise UsageError(f"data.cache_dir is on a node-local path ({cache}) but the job's ranks run on several nodes",
                         "data.cache_dir", "give a folder on a shared file system (the default ./data/prepared is "
                                           "relative to the job's working folder)")
    for key in ("path", "test_path"):
        source = getattr(cfg, key)
        if source and cfg.name == "folder":
            src = Path(source).expanduser().resolve()
            if cache.resolve() == src or src in cache.resolve().parents:
                raise UsageError("data.cache_dir lies inside the image folder, which is never written to",
                                 "data.cache_dir", "choose a cache folder outside data.path")


class Progress:
    """Rank 0's share, shown as a bar on a terminal and as a line every 10% (or 30 s) in a log."""

    def __init__(self, world_size: int, stream=sys.stdout):
        self.stream, self.world_size = stream, world_size
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.last_line, self.last_tenth = 0.0, -1

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        fraction = done / total if total else 1.0
        rate = done * self.world_size / max(now - self.start, 1e-9)
        if self.tty:
            bar = "#" * int(30 * fraction)
            self.stream.write(f"\rpreparing [{bar:<30}] {fraction:4.0%} {rate:,.0f} images/s ")
            if done == total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(fraction * 10) > self.last_tenth or now - self.last_line > 30:
            self.last_tenth, self.last_line = int(fraction * 10), now
            print(f"preparing: {fraction:.0%} of rank 0's {total:,} rows, {rate:,.0f} images/s (all ranks, "
                  "estimated)", file=self.stream, flush=True)


def _take_lock(final: Path, say):
    """The preparation's lease; None when another preparation finished this dataset while we waited."""
    from ae_dist.data import prepared
    from ae_dist.run.lease import Lease, is_alive, read_holder

    lock = final.with_name(f"{final.name}.lock")
    said = False
    while True:
        lease = Lease(lock, LOCK_STALE_S)
        try:
            lease.take()
            return lease
        except UsageError:
            holder = read_holder(lock)
            if not said and holder is not None:
                say(f"waiting: {final.name} is being prepared by {holder.describe()}")
                said = True
            while (holder := read_holder(lock)) is not None and is_alive(holder, LOCK_STALE_S):
                time.sleep(WAIT_POLL_S)
            if prepared.read_manifest(final) is not None:
                return None


def release(lease) -> None:
    lease.release()
    with contextlib.suppress(OSError):
        lease.path.parent.rmdir()  # the lock folder, when no other preparation waits in it


def prepare(cfg: DataConfig, info, force_check: bool = False, say=print) -> dict:
    """Make sure the prepared dataset for ``cfg`` exists (every rank calls this); its manifest.

    ``force_check`` (the prepare command): list the folder again and prepare anew when its files changed.
    """
    from ae_dist.data import custom, load_split, prepared
    from ae_dist.run.agree import on_rank0

    final = custom.location(cfg)
    check_cache_dir(cfg, info.world_size > info.local_world_size)
    started = time.monotonic()

    def decide() -> dict:
        manifest = prepared.read_manifest(final)
        if custom.is_current(cfg, manifest):
            if not force_check or cfg.name != "folder":
                return {"ready": True}
            if custom.listing_digest(cfg) == manifest["files"].get("listing"):
                return {"ready": True}
            say(f"files changed in {cfg.path} since it was prepared: preparing again")
        final.parent.mkdir(parents=True, exist_ok=True)
        lease = _take_lock(final, say)
        if lease is None:
            return {"ready": True}
        try:
            for gone in prepared.remove_leftovers(final):
                say(f"removed {gone.name}, left by a preparation that did not finish")
            work = final.with_name(f"{final.name}.partial-{secrets.token_hex(4)}")
            if custom.uses_whole(cfg):
                work.mkdir()
                prepared.write_json(work / prepared.MANIFEST, custom.whole_manifest(cfg, work))
                prepared.publish(work, final)
                release(lease)
                return {"ready": True}
            plan, rows, labels, base = custom.plan(cfg, load_split)
            if plan.rows == 0 or (cfg.name == "folder" and not rows):
                raise UsageError(f"no images in {cfg.path} ({len(base.get('skipped', []))} files skipped"
                                 + (f", first: {base['skipped'][0][0]}: {base['skipped'][0][1]}" if base.get("skipped")
                                    else "") + ")", "data.path", "give a folder of images Pillow can read")
            prepared.start_work(work, plan, iter(rows))
            _PENDING[str(work)] = (lease, labels, base)
        except BaseException:
            release(lease)
            raise
        return {"ready": False, "work": str(work)}

    agreed = on_rank0(info, decide)
    if agreed["ready"]:
        return prepared.read_manifest(final)
    work = Path(agreed["work"])
    if not info.is_main:
        prepared.wait_for([work / prepared.PLAN], lambda: work.exists(), WAIT_POLL_S)
    try:
        decode = custom.decoder(cfg, load_split)
        progress = Progress(info.world_size) if info.is_main else None
        prepared.write_share(work, info.rank, info.world_size, decode, progress)
    except BaseException:
        if info.is_main:
            release(_PENDING.pop(str(work))[0])
        raise
    if not info.is_main:  # wait for rank 0 to publish, without a collective (that may take longer than its timeout)
        prepared.wait_for([final / prepared.MANIFEST], lambda: work.exists() or final.exists(), WAIT_POLL_S)
        return prepared.read_manifest(final)
    lease, labels, base = _PENDING.pop(str(work))
    try:
        prepared.wait_for([work / f"done-{rank}.json" for rank in range(info.world_size)], lambda: True, WAIT_POLL_S)
        manifest = prepared.finish(work, info.world_size, labels, base)
        if not sum(part["count"] for part in manifest["parts"].values()):
            first = manifest["skipped"][0] if manifest["skipped"] else ["", ""]
            raise UsageError(f"no images in the folder: all {len(manifest['skipped'])} files were skipped (first: "
                             f"{first[0]}: {first[1]})", f"data.path={cfg.path}", "give a folder of images Pillow can read")
        if manifest["skipped"] and cfg.on_bad_image == "error":
            first = manifest["skipped"][0]
            raise UsageError(f"bad file: {first[1]}", first[0], "remove or repair it, or use data.on_bad_image=skip")
        prepared.publish(work, final)
    finally:
        release(lease)
    count = sum(part["count"] for part in manifest["parts"].values())
    seconds = time.monotonic() - started
    skipped = manifest["skipped"]
    if skipped:
        print(f"warning: {len(skipped)} files skipped (first: {skipped[0][0]}: {skipped[0][1]}); all are listed in "
              f"{final / prepared.MANIFEST}", file=sys.stderr, flush=True)
    for name in manifest.get("empty_classes", []):
        print(f"warning: class folder {name!r} holds no images", file=sys.stderr, flush=True)
    say(f"{count} images, {len(skipped)} skipped, {seconds:.2f} seconds, {count / max(seconds, 1e-9):.0f} images/s "
        f"({info.world_size} ranks; prepared into {final})")
    return manifest




def parser() -> cli.Parser:
    p = cli.Parser(prog="python -m ae_dist.prepare", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", metavar="NAME|PATH", help="experiment: a packaged config by name or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides (data.*)")
    return p


@reporting
def main(argv: list[str] | None = None) -> int:
    config, _ = cli.train_args(argv, parser())
    return run(config)


def run(config: Config) -> int:
    from ae_dist.dist.group import distributed

    with distributed("cpu", config.dist.timeout_s) as info:
        said: list[str] = []

        def say(line: str) -> None:
            said.append(line)
            print(line, flush=True)

        manifest = prepare(config.data, info, force_check=True, say=say if info.is_main else (lambda line: None))
        if info.is_main and not any("images/s" in line for line in said):
            count = sum(part["count"] for part in manifest["parts"].values())
            print(f"{count} images, {len(manifest['skipped'])} skipped, 0 seconds, 0 images/s (up to date: "
                  f"{custom_location(config.data)})", flush=True)
    return 0


def custom_location(cfg: DataConfig) -> Path:
    from ae_dist.data import custom

    return custom.location(cfg)


if __name__ == "__main__":
    sys.exit(main())
