"""Cluster profiles: one YAML file per cluster, `configs/clusters/NAME.yaml`, picked with `--cluster NAME`.

A profile holds what a user would otherwise type on every submission: the login host for
SSH, the work folder there, the shell lines that prepare python (module loads, venv
activation), and the scheduler request (partition, account, qos, GPUs per node, time).
Flags given on the command line win over the profile; the profile wins over the defaults.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from ae_dist.errors import UsageError

PROFILE_DIR = Path(__file__).resolve().parent.parent / "configs" / "clusters"
EXECUTORS = ("slurm", "local", "debug")

# key -> (accepted YAML types, meaning); the same names as the command-line flags.
KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "host": ((str,), "login node for --remote (a name from your ssh config, or user@host)"),
    "remote_dir": ((str,), "work folder on the login node (code snapshots, configs, runs)"),
    "remote_setup": ((str, list), "shell lines run on the login node before python (venv activation, modules)"),
    "ssh_config": ((str,), "ssh config file to use instead of ~/.ssh/config"),
    "executor": ((str,), "slurm | local | debug"),
    "partition": ((str,), "SLURM partition"),
    "account": ((str,), "SLURM account"),
    "qos": ((str,), "SLURM quality of service"),
    "constraint": ((str,), "SLURM node features (--constraint)"),
    "nodes": ((int,), "nodes per job"),
    "gpus_per_node": ((int,), "GPUs per node; one task per GPU"),
    "tasks_per_node": ((int,), "tasks (trainer processes) per node when there are no GPUs"),
    "cpus_per_task": ((int,), "CPU cores per task"),
    "mem_gb": ((int, float), "memory per node in GB"),
    "time": ((str, int), "time limit: minutes, HH:MM:SS or D-HH:MM:SS"),
    "signal_delay_s": ((int,), "seconds before the time limit that the checkpoint-and-requeue signal comes"),
    "max_requeues": ((int,), "how many times a timed-out job may be requeued"),
    "setup": ((str, list), "shell lines run in the job before python (module loads, venv activation)"),
}


def profile_path(name: str) -> Path:
    """A profile name (configs/clusters/NAME.yaml) or a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    return PROFILE_DIR / f"{name}.yaml"


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name: str | None) -> dict[str, Any]:
    """The profile's values, checked: unknown keys and wrong types are errors naming the key."""
    if not name:
        return {}
    path = profile_path(name)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError("cluster profile not found", str(path),
                         f"use one of {', '.join(available()) or '(none)'} or a path to a YAML file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
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
                             f"did you mean {close[0]}?" if close else f"use one of {', '.join(KEYS)}"))
            continue
        kinds, _ = KEYS[key]
        if isinstance(value, bool) or not isinstance(value, kinds):
            problems.append((f"wrong type {type(value).__name__}", f"{path}: {key}",
                             f"give a {' or '.join(k.__name__ for k in kinds)}"))
        elif isinstance(value, list) and not all(isinstance(line, str) for line in value):
            problems.append(("expected a list of shell lines", f"{path}: {key}", "quote each line"))
    if problems:
        raise UsageError.many(problems)
    return tree


def shell_lines(value: str | list[str] | None) -> list[str]:
    """Setup given as one string (lines or ';'-separated) or as a list of lines."""
    if not value:
        return []
    if isinstance(value, list):
        return [line for line in value if line.strip()]
    return [line for line in value.splitlines() if line.strip()]
