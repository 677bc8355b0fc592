"""`~` in every path key, expanded once (`ae_dist.config.resolve_paths`): by the trainer, and by the launcher where
it submits; a run.dir template under `~` makes one folder, whose run.json holds its own W&B run id and template.

    /work/main/.venv/bin/python -m pytest tests/test_paths.py -q
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ae_dist.config import leaf_fields, load_config, path_keys, resolve_paths, to_flat
from launch import cli, plan
from tests.helpers.commands import PYTHON, REPO, clean_env

PATH_NAMES = ("dir", "root", "path", "cache_dir", "test_path", "labels")  # keys named so hold a path, whatever section
SMALL = ["data.name=synthetic", "data.synthetic_train=64", "data.synthetic_test=16", "train.batch_size=32",
         "model.hidden=8", "train.epochs=1", "wandb.mode=disabled", "train.threads=1"]


@pytest.mark.fast
def test_every_path_key_is_marked_and_expanded(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    keys = path_keys()
    assert {"run.dir", "data.root", "train.resume"} <= set(keys)
    assert all(key in keys for key in leaf_fields() if key.split(".", 1)[1] in PATH_NAMES)
    config = load_config(None, [f"{key}=~/{key}" for key in keys])
    resolved = to_flat(resolve_paths(config))
    assert all(resolved[key] == str(tmp_path / "home" / key) for key in keys), resolved
    assert resolve_paths(load_config(None, ["train.resume=auto"])).train.resume == "auto"  # a word, not a path
    relative = to_flat(resolve_paths(load_config(None, ["run.dir=runs/x"])))
    assert relative["run.dir"] == "runs/x"  # the trainer keeps relative paths relative


@pytest.mark.fast
def test_the_launcher_expands_tilde_in_every_path_key(monkeypatch, tmp_path: Path, capsys) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    config = load_config(REPO / "configs" / "digits.yaml", ["run.dir=~/runs/x", "data.root=~/data",
                                                             "train.resume=~/ckpt/step_00000010.pt"])
    (planned,) = plan.plan_runs(config, [], world_size=1)
    assert (planned.run.dir, planned.data.root, planned.train.resume) == (
        str(home / "runs" / "x"), str(home / "data"), str(home / "ckpt" / "step_00000010.pt"))
    assert cli.main(["--executor", "local", "--dry-run", "--config", "digits", "run.dir=~/runs/x"]) == 0
    assert f"run folder {home / 'runs' / 'x'} (W&B run id" in capsys.readouterr().out
    assert not (work / "~").exists()


def test_a_tilde_run_dir_template_makes_one_folder_with_its_own_id(tmp_path: Path) -> None:
    """`run.dir=~/runs/{wandb_run_id}`: one folder below $HOME, named after the W&B run id its run.json holds,
    with the template; nothing in the working folder."""
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run([PYTHON, "-m", "ae_dist.train", "run.dir=~/runs/{wandb_run_id}", *SMALL], cwd=work,
                            env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert list(work.iterdir()) == []  # no ./~/runs/ID/run.json
    (folder,) = [path for path in (tmp_path / "home" / "runs").iterdir() if path.is_dir()]
    info = json.loads((folder / "run.json").read_text())
    assert info["wandb_run_id"] == folder.name, info
    assert info["run_dir_template"] == str(tmp_path / "home" / "runs" / "{wandb_run_id}"), info
    assert (folder / "model.pt").is_file()
