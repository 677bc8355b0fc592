"""The laptop path: `python -m launch --remote HOST` against a real sshd on 127.0.0.1 (key auth set
up here), whose "login node" is this machine with the local SLURM cluster. The work folder there
is not the repository: the code runs from the snapshot the launcher shipped.

    /work/main/.venv/bin/python -m pytest tests/test_launch_remote.py -q    # as root
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import sshd
from tests.helpers.commands import PYTHON, TINY, clean_env
from tests.helpers.run_files import metrics
from tests.helpers.slurm import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]


@pytest.fixture(scope="module")
def login(tmp_path_factory) -> Iterator[sshd.Sshd]:
    reason = sshd.available()
    if reason:
        if os.environ.get("AE_DIST_REQUIRE_SLURM") == "1":
            pytest.fail(f"sshd required (AE_DIST_REQUIRE_SLURM=1) but unavailable: {reason}", pytrace=False)
        pytest.skip(reason)
    server = sshd.start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def test_submit_status_logs_fetch_over_ssh(slurm_cluster: SlurmCluster, login: sshd.Sshd, tmp_path: Path) -> None:
    laptop, work = tmp_path / "laptop", tmp_path / "login-work"
    laptop.mkdir()
    wandb_home = tmp_path / "login-wandb"
    setup = (f"export SLURM_CONF={slurm_cluster.slurm_conf} WANDB_MODE=offline WANDB_CACHE_DIR={wandb_home} "
             f"WANDB_CONFIG_DIR={wandb_home} WANDB_DATA_DIR={wandb_home}\n"
             f"export PATH={Path(PYTHON).parent}:$PATH")  # the login node's python: this venv
    remote = ["--remote", login.host, "--ssh-config", str(login.ssh_config), "--remote-dir", str(work),
              "--remote-setup", setup]

    def launch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        # The laptop has no SLURM: no SLURM_CONF, and sbatch would not work here.
        return subprocess.run([PYTHON, "-m", "launch", *args], cwd=laptop, env=clean_env(laptop), capture_output=True,
                              text=True, timeout=timeout)

    submitted = launch(*remote, "--cpus-per-task", "1", "--time", "10", *TINY, "train.epochs=1", "run.dir=runs/r1")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = submitted.stdout.split("submitted job ", 1)[1].split()[0]
    run_dir = work / "runs" / "r1"
    assert f"run folder  {run_dir}" in submitted.stdout
    assert (work / "code" / "current" / "launch" / "cli.py").is_file()  # the shipped snapshot
    assert not (laptop / "runs").exists()  # nothing of the job lives on the laptop

    status = launch("status", *remote, job_id)
    assert status.returncode == 0, status.stderr
    assert f"job {job_id} (slurm" in status.stdout
    assert any(state in status.stdout for state in ("PENDING", "RUNNING", "COMPLETED"))

    logs = launch("logs", *remote)  # the newest job; follows until it ends
    assert logs.returncode == 0, logs.stderr
    assert f"code from {work / 'code'}" in logs.stdout  # ran from the snapshot, not from the repository
    assert "done:" in logs.stdout

    final = launch("status", *remote)
    assert f"run {job_id}: COMPLETED" in final.stdout, final.stdout

    fetched = launch("fetch", *remote, job_id, "--to", "fetched")
    assert fetched.returncode == 0, fetched.stderr
    got = laptop / "fetched" / "r1"
    assert (got / "recon.png").stat().st_size > 0
    records = metrics(got)
    assert records[-1]["kind"] == "epoch" and records[-1]["epoch"] == 1
    assert not (got / "checkpoints").exists()

    key = (login.ssh_config.parent / "client_key").read_text()
    for path in [*work.rglob("*"), *laptop.rglob("*")]:  # the tool keeps no key anywhere
        if path.is_file() and not path.is_symlink():
            assert key not in path.read_text(errors="replace"), path


def test_tilde_is_the_login_nodes_home(login: sshd.Sshd, tmp_path: Path) -> None:
    """`run.dir=~/...` and `data.root=~/...` from a laptop mean the login node's home: expanded there, not here.
    (The login node's HOME is set by --remote-setup, so the two homes differ on one machine.)"""
    laptop, work, there = tmp_path / "laptop", tmp_path / "login-work", tmp_path / "login-home"
    laptop.mkdir()
    there.mkdir()
    setup = f"export HOME={there} WANDB_MODE=disabled\nexport PATH={Path(PYTHON).parent}:$PATH"
    remote = ["--remote", login.host, "--ssh-config", str(login.ssh_config), "--remote-dir", str(work),
              "--remote-setup", setup]
    small = ["data.name=synthetic", "data.synthetic_train=64", "data.synthetic_test=16", "train.batch_size=32",
             "model.hidden=8", "train.epochs=1", "wandb.mode=disabled", "train.threads=1"]

    def launch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "launch", *args], cwd=laptop, env=clean_env(laptop), capture_output=True,
                              text=True, timeout=300)

    submitted = launch(*remote, "--executor", "local", *small, "run.dir=~/runs/tilde", "data.root=~/data")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert f"run folder  {there / 'runs' / 'tilde'}" in submitted.stdout, submitted.stdout
    logs = launch("logs", *remote)  # follows until the job ends
    assert logs.returncode == 0 and "done:" in logs.stdout, logs.stdout + logs.stderr
    assert (there / "runs" / "tilde" / "model.pt").is_file()
    config = (there / "runs" / "tilde" / "config.yaml").read_text()
    assert f"root: {there / 'data'}" in config, config
    assert not (laptop / "home" / "runs").exists() and not list(tmp_path.rglob("~"))  # not the laptop's, no ./~
