"""Listing an image folder: classes, files and their fixed order, and the files skipped before any decoding.

torchvision's ImageFolder layout: one subfolder per class, class names in natural order (``10``
after ``9``), files found at any depth below their class folder; a folder with no subfolders is
one class (named after the folder). Rows are ordered by class, then by the natural order of
their relative path, whatever order the file system lists them in. Symbolic links are followed,
each folder once (a link loop is skipped with its reason); names starting with ``.`` are not
images (``._x.jpg`` macOS files and ``.DS_Store`` are listed as skipped, hidden folders are not
entered). Nothing is opened here except folders: recognising images is the decoder's job.
"""

from __future__ import annotations

import os
import re
import stat as stat_module
from dataclasses import dataclass, field
from pathlib import Path

from ae_dist.errors import UsageError

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """``"img10"`` after ``"img9"``: runs of digits compare as numbers, the rest as text."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part) for part in _DIGITS.split(text) if part)


def path_key(relative: str) -> tuple:
    return tuple(natural_key(part) for part in relative.split("/"))


@dataclass
class Listing:
    """What a folder holds: class names, files (relative path, class index, size, mtime), files skipped by name."""

    root: Path
    class_names: list[str]
    files: list[tuple[str, int, int, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)


def list_folder(root: Path, key: str = "data.path", class_names: list[str] | None = None) -> Listing:
    """List ``root``; ``class_names`` (a test folder's) maps class folders onto the training folder's labels."""
    if not root.exists():
        raise UsageError("image folder does not exist", f"{key}={root}", "give the folder that holds the images")
    if not root.is_dir():
        raise UsageError("not a folder", f"{key}={root}", "give a folder of images (one subfolder per class)")
    try:
        entries = sorted(os.scandir(root), key=lambda entry: natural_key(entry.name))
    except OSError as err:
        raise UsageError(f"cannot read the image folder ({err.strerror})", f"{key}={root}", "check its permissions") from None
    subfolders = [e for e in entries if not e.name.startswith(".") and _is_dir(e)]
    seen: set[tuple[int, int]] = {_identity(root)}
    if not subfolders:
        names = class_names if class_names is not None else [root.name or "images"]
        listing = Listing(root, list(names))
        _walk(root, "", 0, listing, seen)
        if class_names is not None and len(class_names) != 1:
            raise UsageError("the test folder has no class folders but the training folder has", f"{key}={root}",
                             "give the test folder the training folder's class subfolders")
    else:
        found = [e.name for e in subfolders]
        if class_names is not None:
            unknown = [name for name in found if name not in class_names]
            if unknown:
                raise UsageError(f"class folder {unknown[0]!r} is not a class of data.path", f"{key}={root}",
                                 f"use the training folder's classes ({', '.join(class_names[:8])})")
        listing = Listing(root, list(class_names) if class_names is not None else found)
        for entry in entries:
            if entry.name.startswith("."):
                if not _is_dir(entry):
                    listing.skipped.append((entry.name, _hidden_reason(entry.name)))
            elif not _is_dir(entry):
                listing.skipped.append((entry.name, "not in a class folder"))
        for entry in subfolders:
            before = len(listing.files)
            seen.add(_identity(Path(entry.path)))
            _walk(Path(entry.path), entry.name, listing.class_names.index(entry.name), listing, seen)
            if len(listing.files) == before:
                listing.empty_classes.append(entry.name)
    if not listing.files and not listing.skipped:
        raise UsageError("image folder is empty", f"{key}={root}", "put images in it (one subfolder per class)")
    listing.files.sort(key=lambda item: (item[1], path_key(item[0])))
    listing.skipped.sort(key=lambda item: path_key(item[0]))
    return listing


def _walk(folder: Path, relative: str, label: int, listing: Listing, seen: set[tuple[int, int]]) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError as err:
        listing.skipped.append((relative or ".", f"folder cannot be read ({err.strerror})"))
        return
    for entry in entries:
        rel = f"{relative}/{entry.name}" if relative else entry.name
        if "\n" in entry.name or "\r" in entry.name:
            listing.skipped.append((rel.replace("\n", "\\n").replace("\r", "\\r"), "a line break in its name"))
            continue
        if _is_dir(entry):
            if entry.name.startswith("."):
                continue
            identity = _identity(Path(entry.path))
            if identity in seen:
                listing.skipped.append((rel, "symbolic link loop (folder already listed)"))
                continue
            seen.add(identity)
            _walk(Path(entry.path), rel, label, listing, seen)
        elif entry.name.startswith("."):
            listing.skipped.append((rel, _hidden_reason(entry.name)))
        else:
            try:
                stat = entry.stat()
            except OSError as err:  # a dangling link, a link loop
                listing.skipped.append((rel, f"cannot be read ({err.strerror})"))
                continue
            if not stat_module.S_ISREG(stat.st_mode):  # a FIFO or device would block or never end
                listing.skipped.append((rel, "not a regular file"))
                continue
            listing.files.append((rel, label, stat.st_size, stat.st_mtime_ns))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _hidden_reason(name: str) -> str:
    return "macOS resource fork (._ file)" if name.startswith("._") else "hidden file"
