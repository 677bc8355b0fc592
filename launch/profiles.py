"""Cluster profiles: one YAML file per cluster, picked with `--cluster NAME` (or a path to the file).

A profile holds what a user would otherwise type on every submission: the login host for
SSH, the work folder there, the shell lines that prepare python (module loads, venv
activation), the scheduler request (partition, account, qos, GPUs per node, time) and any
other sbatch option under `sbatch:` (gres, exclude, reservation, mail-type, ...). Its keys
are the fields of `launch.request.Request`, the same names as the flags. Flags win over the
profile; the profile wins over the defaults.

A name is looked up in `./configs/clusters/`, then `~/.config/ae-dist/clusters/`, then the
profiles shipped with the package; the first `NAME.yaml` found is used.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from ae_dist.config import PACKAGED_CONFIGS
from ae_dist.errors import UsageError
from launch.request import EXECUTORS, FIELDS, convert, flag_of

__all__ = ["EXECUTORS", "KEYS", "available", "available_files", "load", "load_profile", "profile_dirs", "profile_path"]

KEYS: dict[str, str] = {name: f.metadata["help"] for name, f in FIELDS.items()}  # profile key -> meaning


def profile_dirs() -> list[Path]:
    """Where profile names are looked up, first match wins."""
    return [Path("configs") / "clusters", Path("~/.config/ae-dist/clusters").expanduser(), PACKAGED_CONFIGS / "clusters"]


def profile_path(name: str) -> Path:
    """A profile name (the first NAME.yaml in `profile_dirs`) or a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    for folder in profile_dirs():
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    found = ", ".join(f"{stem} ({path})" for stem, path in available_files().items())
    raise UsageError(f"cluster profile {name!r} not found", ", ".join(str(d) for d in profile_dirs()),
                     f"use one of {found or '(none)'}, or a path to a YAML file")


def available_files() -> dict[str, Path]:
    """Each profile name and the file it stands for (the first folder holding it)."""
    files: dict[str, Path] = {}
    for folder in profile_dirs():
        for path in sorted(folder.glob("*.yaml")):
            files.setdefault(path.stem, path)
    return dict(sorted(files.items()))


def available() -> list[str]:
    return list(available_files())


def load_profile(name: str | None) -> dict[str, Any]:
    """The profile's values as written; unknown keys and wrong types are errors naming the file and key."""
    return load(name)[1]


def load(name: str | None) -> tuple[str, dict[str, Any]]:
    """(the file used, its values); ("", {}) without a profile."""
    if not name:
        return "", {}
    path = profile_path(name)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError("cluster profile not found", str(path), "give the path to an existing YAML file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError) as err:
        raise UsageError(f"cluster profile unreadable ({err.__class__.__name__})", str(path),
                         "write plain YAML: key: value") from None
    tree = tree or {}
    if not isinstance(tree, dict):
        raise UsageError("cluster profile must be a mapping", str(path), "write e.g. 'partition: gpu'")
    problems = []
    for key, value in tree.items():
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            problems.append(("unknown cluster profile key", f"{path}: {key}",
                             f"did you mean {close[0]}?" if close else
                             "use a request key (python -m launch --help), or any sbatch option under sbatch:"))
            continue
        try:
            convert(FIELDS[key], value)
        except ValueError as err:
            problems.append((f"wrong value ({err})", f"{path}: {key}", f"see python -m launch --help for {flag_of(FIELDS[key])}"))
    if problems:
        raise UsageError.many(problems)
    return str(path), tree
