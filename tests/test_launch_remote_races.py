"""`python -m launch --remote` against a real sshd on 127.0.0.1 (tests/sshd.py) whose login node is
this machine with the local SLURM cluster, when launchers run side by side or are interrupted:
parallel submissions each get their own submission folder and config; Ctrl-C on `logs --remote`
leaves no follower on the login node; the printed next command pastes into a shell as printed.

    /work/main/.venv/bin/python -m pytest tests/test_launch_remote_races.py -q    # as root
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from tests.helpers import sshd
from tests.helpers.commands import PYTHON, TINY, clean_env, wait_for
from tests.helpers.slurm import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]
JOB = ("--cpus-per-task", "1", "--time", "10")


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


class Laptop:
    """The laptop side: `python -m launch` here with the --remote flags of one work folder on the login node."""

    def __init__(self, cluster: SlurmCluster, login: sshd.Sshd, tmp: Path, work: Path):
        self.folder, self.work, self.cluster = tmp / "laptop", work, cluster
        self.folder.mkdir()
        self.setup = (f"export SLURM_CONF={cluster.slurm_conf} WANDB_MODE=offline WANDB_CACHE_DIR={tmp}/w "
                      f"WANDB_CONFIG_DIR={tmp}/w WANDB_DATA_DIR={tmp}/w\nexport PATH={Path(PYTHON).parent}:$PATH")
        self.remote = ["--remote", login.host, "--remote-dir", str(work), "--remote-setup", self.setup,
                       "--ssh-config", str(login.ssh_config)]

    def start(self, *args: str, **popen) -> subprocess.Popen:
        return subprocess.Popen([PYTHON, "-m", "launch", *args], cwd=self.folder, env=clean_env(self.folder),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)

    def submit_all(self, points: list[tuple[str, ...]]) -> list[str]:
        """Start one submission per point at once; each must succeed; their stdouts."""
        procs = [self.start(*self.remote, *JOB, *TINY, *point) for point in points]
        outs = [proc.communicate(timeout=600) for proc in procs]
        for proc, (out, err) in zip(procs, outs):
            assert proc.returncode == 0, out + err
        return [out for out, _ in outs]

    def cancel(self, job_ids: list[str]) -> None:
        self.cluster.run(["scancel", *job_ids], check=False)


def job_of(out: str) -> tuple[str, str]:
    """(job id, run folder) from a submission's printout."""
    return re.search(r"submitted job (\S+)", out).group(1), re.search(r"run folder  (.*)", out).group(1)


def submission_configs(work: Path) -> list[dict]:
    return [yaml.safe_load((folder / "config.yaml").read_text()) for folder in sorted((work / "submissions").iterdir())]


def test_two_parallel_submissions_keep_their_own_config(slurm_cluster: SlurmCluster, login: sshd.Sshd,
                                                        tmp_path: Path) -> None:
    """Two submissions at once, different optim.lr: two submission folders, two jobs, two run folders, and each run
    folder's config.yaml (written by the trainer on its node) holds its own lr. The work folder's name is hostile:
    the printed next command, pasted into bash, reaches `python` with the same arguments and runs nothing else."""
    marker = tmp_path / "PWNED"
    laptop = Laptop(slurm_cluster, login, tmp_path, tmp_path / f"my runs $(touch {marker})")
    outs = laptop.submit_all([("optim.lr=0.001", "run.dir=runs/a"), ("optim.lr=0.002", "run.dir=runs/b")])
    jobs = [job_of(out) for out in outs]
    try:
        assert sorted(c["optim"]["lr"] for c in submission_configs(laptop.work)) == [0.001, 0.002]
        assert len({job for job, _ in jobs}) == 2 and [run for _, run in jobs] == [
            str(laptop.work / "runs" / "a"), str(laptop.work / "runs" / "b")]
        for (_, run), lr in zip(jobs, (0.001, 0.002)):
            config = Path(run) / "config.yaml"
            wait_for(config.exists, 240, f"{config} (the job started)", interval=0.5)
            assert yaml.safe_load(config.read_text())["optim"]["lr"] == lr
    finally:
        laptop.cancel([job for job, _ in jobs])
    assert not list((laptop.work / "code").glob(".*"))  # no half-unpacked snapshot or link left

    pasted = re.search(r"  next {10}(.*)", outs[0]).group(1)
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "python").write_text(f'#!{PYTHON}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n')
    (fake / "python").chmod(0o755)
    ran = subprocess.run(["bash", "-c", pasted], env={"PATH": f"{fake}:/usr/bin:/bin"}, capture_output=True, text=True,
                         cwd=tmp_path, timeout=30)
    assert ran.returncode == 0 and json.loads(ran.stdout) == ["-m", "launch", *laptop.remote, "status", jobs[0][0]]
    assert not marker.exists()


def test_ten_parallel_submissions(slurm_cluster: SlurmCluster, login: sshd.Sshd, tmp_path: Path) -> None:
    """Ten at once (held: nothing trains): ten submission folders with ten configs, ten jobs, ten registry lines."""
    laptop = Laptop(slurm_cluster, login, tmp_path, tmp_path / "work")
    rates = [f"0.00{i}" for i in range(1, 10)] + ["0.01"]
    outs = laptop.submit_all([("--sbatch", "hold", f"optim.lr={lr}", f"run.dir=runs/{i}") for i, lr in enumerate(rates)])
    jobs = [job_of(out) for out in outs]
    laptop.cancel([job for job, _ in jobs])
    assert sorted(c["optim"]["lr"] for c in submission_configs(laptop.work)) == sorted(map(float, rates))
    assert len({job for job, _ in jobs}) == 10 and len({run for _, run in jobs}) == 10
    registry = (laptop.work / "runs" / "jobs.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["job_id"] for line in registry) == sorted(job for job, _ in jobs)
    assert not list((laptop.work / "code").glob(".*"))


def test_ctrl_c_on_remote_logs_leaves_no_follower(slurm_cluster: SlurmCluster, login: sshd.Sshd, tmp_path: Path) -> None:
    """`logs --remote` follows a job that never ends (held); SIGINT to the laptop's launcher: it exits 130, and within
    5 s no process of that SSH session is left on the login node (found as descendants of this test's sshd)."""
    laptop = Laptop(slurm_cluster, login, tmp_path, tmp_path / "work")
    (out,) = laptop.submit_all([("--sbatch", "hold", "run.dir=runs/held")])
    job, _ = job_of(out)
    try:
        follower = laptop.start("logs", *laptop.remote, job)
        server = psutil.Process(login.process.pid)

        def remote_followers() -> list[psutil.Process]:
            found = []
            for proc in server.children(recursive=True):
                try:
                    if "logs" in proc.cmdline() and "launch" in proc.cmdline():
                        found.append(proc)
                except psutil.NoSuchProcess:
                    pass
            return found

        session = [*wait_for(remote_followers, 120, "the follower on the login node"), *server.children()]
        laptop_side = [psutil.Process(follower.pid), *psutil.Process(follower.pid).children(recursive=True)]
        os.kill(follower.pid, signal.SIGINT)
        try:
            _, err = follower.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"30 s after SIGINT the laptop side is {_described(laptop_side)}, the login node's "
                        f"{_described(session)}")
        assert follower.returncode == 130 and "Traceback" not in err, err
        wait_for(lambda: not any(_alive(proc) for proc in session), 5, "the login node's follower to exit")
    finally:
        laptop.cancel([job])


def _described(procs: list[psutil.Process]) -> str:
    """Each process: pid, state, command, and its signal lines from /proc (pending, blocked, ignored, caught)."""
    seen = []
    for proc in procs:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            signals = " ".join(line.replace(":\t", "=") for line in status if line.startswith(("Sig", "ShdPnd")))
            seen.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())[:80]!r} {signals}")
        except (psutil.NoSuchProcess, FileNotFoundError):
            seen.append(f"{proc.pid} gone")
    return "; ".join(seen)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
