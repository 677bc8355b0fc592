"""The user's own data (``data.name=folder`` and ``array``), and any source, as a prepared dataset.

`plan` says what a preparation writes: the row list (one row per file or array row: where it
comes from, its label, its split), in the fixed order train, val, test; `decoder` turns one row
into pixels; `open_part` maps a prepared split. The splits:

- test: ``data.test_path`` when given, else the rows whose hash of relative path (folders) or
  row index (arrays) falls under ``data.test_fraction`` (`ae_dist.data.holdout`); the built-in
  datasets keep their own test split;
- val: of the remaining rows, those under ``data.val_fraction`` by the same kind of key;
- ``data.classes`` keeps only the named classes in train and val; test stays whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ae_dist.config import DataConfig
from ae_dist.data import arrays, folder, holdout, images, prepared
from ae_dist.data.splits import Split
from ae_dist.errors import UsageError

BUILTIN = ("fashion_mnist", "mnist", "digits", "synthetic")


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def location(cfg: DataConfig) -> Path:
    """The prepared dataset's folder for this config (it may not exist yet)."""
    fields = {"name": cfg.name, "path": _resolved(cfg.path), "labels": _resolved(cfg.labels),
              "test_path": _resolved(cfg.test_path), "test_labels": _resolved(cfg.test_labels), **options(cfg)}
    if cfg.name in ("fashion_mnist", "mnist"):
        fields["root"] = _resolved(cfg.root)
    return prepared.dataset_dir(Path(cfg.cache_dir).expanduser().absolute(), cfg.name, fields)


def options(cfg: DataConfig) -> dict:
    """The options that change the prepared bytes (the identity keeps them; paths are not among them)."""
    out = {"val_fraction": cfg.val_fraction, "classes": list(cfg.classes)}
    if cfg.name == "folder":
        out.update(size=list(cfg.size), channels=cfg.channels, fit=cfg.fit, max_pixels=cfg.max_pixels)
    if cfg.name in ("folder", "array"):
        out.update(test_fraction=0.0 if cfg.test_path else cfg.test_fraction, test_given=bool(cfg.test_path))
    if cfg.name == "synthetic":
        out.update(synthetic_train=cfg.synthetic_train, synthetic_test=cfg.synthetic_test)
    return out


def is_current(cfg: DataConfig, manifest: dict | None) -> bool:
    """A complete manifest whose mapped source files (uint8 arrays used whole) are unchanged."""
    if manifest is None:
        return False
    for info in manifest["parts"].values():
        stat = info.get("source_stat")
        if stat is not None:
            try:
                now = Path(info["file"]).stat()
            except OSError:
                return False
            if [now.st_size, now.st_mtime_ns] != stat:
                return False
    return True


# ---- what a preparation writes ---------------------------------------------------------------------------------


Loader = Callable[[DataConfig, str], Split]  # `ae_dist.data.load_split`, for the built-in datasets


def plan(cfg: DataConfig, load: Loader) -> tuple[prepared.Plan, list[list], np.ndarray, dict]:
    """(the plan, the row list, the labels of every row, the manifest's source part) of a preparation."""
    if cfg.name == "folder":
        return _folder_plan(cfg)
    if cfg.name == "array":
        return _array_plan(cfg)
    return _builtin_plan(cfg, load)


def _parts_of(test: np.ndarray, val: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """0 train, 1 val, 2 test, -1 left out (a class not in data.classes)."""
    part = np.where(test, 2, np.where(val, 1, 0))
    return np.where((part < 2) & ~chosen, -1, part)


def _chosen(cfg: DataConfig, labels: np.ndarray, class_names: list[str]) -> np.ndarray:
    if not cfg.classes:
        return np.ones(len(labels), dtype=bool)
    wanted = set()
    for name in cfg.classes:
        if name in class_names:
            wanted.add(class_names.index(name))
        elif name.isdigit() and int(name) < max(len(class_names), int(labels.max(initial=0)) + 1):
            wanted.add(int(name))
        else:
            raise UsageError(f"no class {name!r}", "data.classes",
                             f"use class names or label numbers of the data ({', '.join(class_names[:10])})")
    return np.isin(labels, sorted(wanted))


def _ordered(parts: np.ndarray, rows: list[list], labels: np.ndarray, class_names: list[str],
             shape: tuple[int, int, int]) -> tuple[prepared.Plan, list[list], np.ndarray]:
    order = np.concatenate([np.flatnonzero(parts == p) for p in range(3)])
    counts = {name: int((parts == p).sum()) for p, name in enumerate(prepared.PARTS)}
    counts = {name: n for name, n in counts.items() if n or name != "val"}
    for index in order:
        rows[index][3] = prepared.PARTS[parts[index]]
    return prepared.Plan(counts, shape, class_names), [rows[i] for i in order], labels[order]


def _folder_plan(cfg: DataConfig):
    root = Path(cfg.path).expanduser()
    listing = folder.list_folder(root)
    entries = [(0, rel, label, size, mtime) for rel, label, size, mtime in listing.files]
    skipped = [[rel, reason] for rel, reason in listing.skipped]
    test_listing = None
    if cfg.test_path:
        test_listing = folder.list_folder(Path(cfg.test_path).expanduser(), "data.test_path", listing.class_names)
        entries += [(1, rel, label, size, mtime) for rel, label, size, mtime in test_listing.files]
        skipped += [[f"test:{rel}", reason] for rel, reason in test_listing.skipped]
    rels = [rel for _, rel, *_ in entries]
    source = np.array([e[0] for e in entries], dtype=np.int8)
    labels = np.array([e[2] for e in entries], dtype=np.int64)
    test = source == 1 if cfg.test_path else holdout.held_out(holdout.path_hashes(rels, "test"), cfg.test_fraction)
    val = ~test & holdout.held_out(holdout.path_hashes(rels, "val"), cfg.val_fraction)
    parts = _parts_of(test, val, _chosen(cfg, labels, listing.class_names))
    rows = [[root_index, rel, int(label), ""] for root_index, rel, label, *_ in entries]
    the_plan, rows, labels = _ordered(parts, rows, labels, listing.class_names, (cfg.channels, *cfg.size))
    identity_digest, listing_digest = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    for root_index, rel, _, size, mtime in entries:
        identity_digest.update(f"{root_index}\0{rel}\0{size}\n".encode("utf-8", "surrogateescape"))
        listing_digest.update(f"{root_index}\0{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    base = {"name": cfg.name, "options": options(cfg), "skipped": skipped,
            "source": {"path": _resolved(cfg.path), "test_path": _resolved(cfg.test_path)},
            "files": {"count": len(entries), "digest": identity_digest.hexdigest(), "listing": listing_digest.hexdigest()},
            "empty_classes": listing.empty_classes + (test_listing.empty_classes if test_listing else [])}
    return the_plan, rows, labels, base


def listing_digest(cfg: DataConfig) -> str:
    """The digest of the folder's file list with sizes and times, to tell whether files changed since."""
    return _folder_plan(cfg)[3]["files"]["listing"]


def _array_source(cfg: DataConfig, test: bool) -> tuple[Path, tuple[int, ...], np.dtype, np.ndarray]:
    path = Path(cfg.test_path if test else cfg.path).expanduser()
    key, labels_key = ("data.test_path", "data.test_labels") if test else ("data.path", "data.labels")
    shape, dtype = arrays.check_images(path, key)
    labels_path = cfg.test_labels if test else cfg.labels
    labels = (arrays.load_labels(Path(labels_path).expanduser(), labels_key, shape[0]) if labels_path
              else np.zeros(shape[0], dtype=np.int64))
    return path, shape, dtype, labels


def uses_whole(cfg: DataConfig) -> bool:
    """A uint8 array mapped as it is: no rows to carve (test split given or none, no val, no class filter)."""
    if cfg.name != "array" or cfg.val_fraction > 0 or cfg.classes or (not cfg.test_path and cfg.test_fraction > 0):
        return False
    return all(arrays.check_images(Path(p).expanduser(), key)[1] == np.uint8
               for p, key in ((cfg.path, "data.path"), (cfg.test_path, "data.test_path")) if p)


def whole_manifest(cfg: DataConfig, work: Path) -> dict:
    """The manifest of uint8 arrays used whole: the sources named, labels written beside the manifest."""
    parts = {}
    for part, test in (("train", False), ("test", True)):
        if test and not cfg.test_path:
            shape = arrays.check_images(Path(cfg.path).expanduser(), "data.path")[0]
            parts[part] = {"count": 0, "shape": list(shape[1:]), "digest": "", "labels_digest": ""}
            continue
        path, shape, _, labels = _array_source(cfg, test)
        prepared.write_array(work / f"{part}-labels.npy", labels)
        stat = path.stat()
        offset = arrays.read_header(path, "data.path")[2]
        parts[part] = {"file": str(path.resolve()), "labels": f"{part}-labels.npy", "count": shape[0],
                       "shape": list(shape[1:]), "source_stat": [stat.st_size, stat.st_mtime_ns],
                       "digest": prepared.file_digest(path, offset),
                       "labels_digest": hashlib.blake2b(labels.tobytes(), digest_size=16).hexdigest()}
    names = [str(label) for label in range(int(np.load(work / "train-labels.npy").max(initial=0)) + 1)]
    manifest = {"format": prepared.FORMAT, "name": cfg.name, "options": options(cfg), "class_names": names,
                "parts": parts, "skipped": [], "notes": [], "versions": prepared.versions(),
                "source": {"path": _resolved(cfg.path), "test_path": _resolved(cfg.test_path)}}
    manifest["digest"] = prepared.identity(manifest)
    return manifest


def _array_plan(cfg: DataConfig):
    path, shape, _, labels = _array_source(cfg, False)
    count = shape[0]
    source = np.zeros(count, dtype=np.int8)
    if cfg.test_path:
        _, test_shape, _, test_labels = _array_source(cfg, True)
        if test_shape[1:] != shape[1:]:
            raise UsageError(f"test images of shape {test_shape[1:]}, training images {shape[1:]}", "data.test_path",
                             "give test images of the training images' shape")
        labels = np.concatenate([labels, test_labels])
        source = np.concatenate([source, np.ones(test_shape[0], dtype=np.int8)])
        index = np.concatenate([np.arange(count), np.arange(test_shape[0])])
        test = source == 1
    else:
        index = np.arange(count)
        test = holdout.held_out(holdout.index_hashes(index, "test"), cfg.test_fraction)
    val = ~test & holdout.held_out(holdout.index_hashes(index, "val"), cfg.val_fraction)
    names = [str(label) for label in range(int(labels.max(initial=0)) + 1)]
    parts = _parts_of(test, val, _chosen(cfg, labels, names))
    rows = [[int(s), int(i), int(label), ""] for s, i, label in zip(source, index, labels)]
    the_plan, rows, labels = _ordered(parts, rows, labels, names, tuple(shape[1:]))
    base = {"name": cfg.name, "options": options(cfg), "skipped": [],
            "source": {"path": _resolved(cfg.path), "test_path": _resolved(cfg.test_path)},
            "files": {"count": len(rows), "digest": prepared.file_digest(path)}}
    return the_plan, rows, labels, base


def _builtin_plan(cfg: DataConfig, load: Loader):
    from ae_dist.data.splits import CLASS_NAMES

    splits = {part: load(cfg, part) for part in prepared.PARTS}
    rows, labels, parts = [], [], []
    for p, part in enumerate(prepared.PARTS):
        split = splits[part]
        rows += [[p, i, int(label), ""] for i, label in enumerate(split.labels.tolist())]
        labels.append(split.labels.numpy())
        parts.append(np.full(len(split), p))
    labels_all = np.concatenate(labels)
    names = list(CLASS_NAMES.get(cfg.name, [str(i) for i in range(int(labels_all.max(initial=0)) + 1)]))
    shape = tuple(splits["train"].images.shape[1:])
    the_plan, rows, labels_all = _ordered(np.concatenate(parts), rows, labels_all, names, shape)
    base = {"name": cfg.name, "options": options(cfg), "skipped": [], "source": {"root": _resolved(cfg.root)}}
    return the_plan, rows, labels_all, base


def decoder(cfg: DataConfig, load: Loader) -> Callable[[list], tuple[np.ndarray, str]]:
    """What turns one row of the row list into uint8 pixels (C, H, W) and a note."""
    if cfg.name == "folder":
        roots = [Path(cfg.path).expanduser(), Path(cfg.test_path).expanduser() if cfg.test_path else None]
        size, channels = tuple(cfg.size), cfg.channels

        def decode_file(row: list) -> tuple[np.ndarray, str]:
            try:
                return images.decode(str(roots[row[0]] / row[1]), size, channels, cfg.fit, cfg.max_pixels)
            except images.BadImage as err:
                if cfg.on_bad_image == "error":
                    raise UsageError(f"bad image: {err}", str(roots[row[0]] / row[1]),
                                     "remove or repair it, or use data.on_bad_image=skip") from None
                raise prepared.BadRow(str(err)) from None
        return decode_file
    if cfg.name == "array":
        sources = [arrays.map_images(Path(cfg.path).expanduser(), "data.path"),
                   arrays.map_images(Path(cfg.test_path).expanduser(), "data.test_path") if cfg.test_path else None]

        def decode_row(row: list) -> tuple[np.ndarray, str]:
            return arrays.to_uint8(np.asarray(sources[row[0]][row[1]])[None], row[1], Path(cfg.path), "data.path")[0], ""
        return decode_row
    splits = [load(cfg, part).images for part in prepared.PARTS]
    return lambda row: (splits[row[0]][row[1]].numpy(), "")


# ---- reading a prepared dataset ---------------------------------------------------------------------------------


def open_part(cfg: DataConfig, part: str) -> Split:
    """The ``part`` split of the prepared dataset for ``cfg``: memory-mapped images and labels."""
    where = location(cfg)
    manifest = prepared.read_manifest(where)
    if not is_current(cfg, manifest):
        raise UsageError("the data is not prepared (or its source changed since)", f"data.path={cfg.path}",
                         "run python -m ae_dist.prepare with the same data.* keys, or start the training, "
                         "which prepares it")
    skipped = manifest.get("skipped", [])
    if skipped and cfg.on_bad_image == "error":
        raise UsageError(f"{len(skipped)} bad files were skipped (first: {skipped[0][0]}: {skipped[0][1]})",
                         "data.on_bad_image=error", "remove or repair them, or use data.on_bad_image=skip")
    info = manifest["parts"].get(part)
    names = tuple(manifest["class_names"])
    shape = tuple(info["shape"]) if info else tuple(manifest["parts"]["train"]["shape"])
    if not info or info["count"] == 0:
        return Split(torch.zeros((0, *shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), names,
                     manifest["digest"])
    file = Path(info["file"]) if Path(info["file"]).is_absolute() else where / info["file"]
    pixels = np.load(file, mmap_mode="c", allow_pickle=False).reshape(info["count"], *shape)
    labels = np.load(where / info["labels"], mmap_mode="c", allow_pickle=False)
    return Split(torch.from_numpy(pixels), torch.from_numpy(labels), names, manifest["digest"])
