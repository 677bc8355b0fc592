"""A wheel built from the repo carries the configs: installed in a fresh venv, run from an empty folder.

The venv gets the wheel alone (no editable install, no checkout on its path); its dependencies
come from this interpreter's site-packages through a .pth line, so nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.helpers.commands import REPO, run_module

pytestmark = pytest.mark.slow
ANYWHERE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "wandb", ".pytest_cache",
                                  ".ruff_cache", ".hypothesis")


def not_sources(folder: str, names: list[str]) -> set[str]:
    """What the copy leaves out; a run's ``runs/`` and ``data/`` only at the top (``ae_dist/data`` is code)."""
    top = {"runs", "data"} & set(names) if Path(folder) == REPO else set()
    return set(ANYWHERE(folder, names)) | top


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The python of a fresh venv holding only the wheel built from this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, tmp / "src", ignore=not_sources)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
                    str(tmp / "src")], check=True, capture_output=True, timeout=600)
    wheel = next((tmp / "dist").glob("ae_dist-*.whl"))
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(tmp / "venv")],
                   check=True, timeout=120)
    python = tmp / "venv" / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                               capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    (site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    shutil.rmtree(tmp / "src")
    return python


def run_in_empty_folder(python: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed package's command, from an empty folder, with nothing of this checkout on any path."""
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "WANDB_MODE": "disabled"}
    if args[0] == "-m":
        return run_module(*args[1:], tmp=tmp, cwd=empty, env=env, python=python, timeout=600)
    return subprocess.run([python, *args], cwd=empty, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_holds_configs_and_profiles(installed: Path, tmp_path: Path) -> None:
    code = ("import ae_dist.config as c; print(c.__file__); print(c.PACKAGED_CONFIGS); "
            "print(sorted(p.name for p in c.PACKAGED_CONFIGS.rglob('*.yaml')))")
    module, folder, names = run_in_empty_folder(installed, tmp_path, "-c", code).stdout.splitlines()
    assert str(REPO) not in module and folder.startswith(str(installed.parent.parent))
    assert eval(names) == ["default.yaml", "digits.yaml", "digits_conv.yaml", "example.yaml", "images.yaml", "local.yaml"]
    default = run_in_empty_folder(installed, tmp_path, "-m", "ae_dist.train", "--print-config")
    assert default.returncode == 0, default.stderr
    assert yaml.safe_load(default.stdout)["run"]["dir"] == "runs/fashion_mnist"  # the packaged default.yaml


def test_the_installed_trainer_trains_a_packaged_config(installed: Path, tmp_path: Path) -> None:
    result = run_in_empty_folder(installed, tmp_path, "-m", "ae_dist.train", "--config", "digits", "run.dir=r",
                                 "train.epochs=1", "train.threads=1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "empty" / "r" / "model.pt").is_file() and "epoch 1/1" in result.stdout
