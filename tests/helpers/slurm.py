"""The ``slurm_cluster`` fixture: the local SLURM cluster of ``slurm/cluster.sh``, for real jobs.

tests/conftest.py makes it available to every test::

    from tests.helpers.slurm import slurm_cluster  # noqa: F401

The fixture starts the cluster unless it is already running, and stops it at the end of the
session if (and only if) a test session started it. When the cluster cannot run here (not
root, SLURM not installed, start fails) the tests that need it are skipped, or fail when
``AE_DIST_REQUIRE_SLURM=1`` (CI). For the whole session ``SLURM_CONF`` is set in
``os.environ``, so in-process callers of plain ``sbatch`` (submitit) reach this cluster.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.commands import REPO

CLUSTER_SH = REPO / "slurm" / "cluster.sh"
DEFAULT_STATE_DIR = Path("/tmp/ae-dist-slurm")
START_TIMEOUT_S = 180


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs to know about the running cluster."""

    nodes: tuple[str, ...]  # node names == their hostnames, e.g. ("aenode1", "aenode2")
    node_addrs: dict[str, str]  # node name -> its address on the cluster bridge
    controller_addr: str  # slurmctld (and slurmdbd) address, reachable from every node
    partitions: tuple[str, ...]  # every partition sinfo lists; the first is the default
    default_partition: str
    cpus_per_node: int
    state_dir: Path  # configs, logs (log/), spool, database
    slurm_conf: Path
    env: dict[str, str] = field(repr=False)  # os.environ + SLURM_CONF: pass to sbatch/srun/sacct
    started_here: bool = False  # this session started it (and will stop it)

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    def run(self, args: Sequence[str], timeout: float = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sbatch, srun, sacct, ...) against this cluster."""
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> exit {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable ARGS``; return the job id."""
        return self.run(["sbatch", "--parsable", *args]).stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str | None:
        """The job's state as sacct reports it (``COMPLETED``, ``RUNNING``, ...), or None if unknown yet."""
        out = self.run(["sacct", "-j", job_id, "-n", "-X", "-P", "-o", "State"], check=False).stdout
        lines = [line for line in out.splitlines() if line.strip()]
        return lines[-1].split()[0] if lines else None  # "CANCELLED by 0" -> "CANCELLED"

    def wait_state(self, job_id: str, states: Sequence[str], timeout: float = 60) -> str:
        """Poll sacct until the job reaches one of ``states``; return that state."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.25)
        raise AssertionError(f"job {job_id}: still {state} after {timeout}s, wanted one of {list(states)}")


def _unavailable(reason: str) -> None:
    if os.environ.get("AE_DIST_REQUIRE_SLURM") == "1":
        pytest.fail(f"local SLURM cluster required (AE_DIST_REQUIRE_SLURM=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"local SLURM cluster unavailable: {reason}")


def _cluster_sh(command: str, env: dict[str, str], timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), command], env=env, capture_output=True, text=True, timeout=timeout)


def _describe(env: dict[str, str], state_dir: Path, started_here: bool) -> SlurmCluster:
    def query(*args: str) -> list[str]:
        result = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=30, check=True)
        return result.stdout.split("\n")

    nodes = tuple(sorted({line.split()[0] for line in query("sinfo", "-h", "-N", "-o", "%N") if line.strip()}))
    partitions = [line.strip() for line in query("sinfo", "-h", "-o", "%P") if line.strip()]
    default = next(p.rstrip("*") for p in partitions if p.endswith("*"))
    ordered = (default, *[p for p in partitions if p != f"{default}*"])
    addrs = {}
    for line in query("scontrol", "show", "node", "-o"):
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "NodeName" in fields:
            addrs[fields["NodeName"]] = fields["NodeAddr"]
    cpus = int(query("sinfo", "-h", "-N", "-o", "%c")[0])
    controller = query("scontrol", "show", "config")
    ctl_addr = next(line.split("(")[1].split(")")[0] for line in controller if line.startswith("SlurmctldHost"))
    return SlurmCluster(nodes=nodes, node_addrs=addrs, controller_addr=ctl_addr, partitions=ordered,
                        default_partition=default, cpus_per_node=cpus, state_dir=state_dir,
                        slurm_conf=Path(env["SLURM_CONF"]), env=env, started_here=started_here)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The running local SLURM cluster (started here if needed); see the module docstring."""
    if os.geteuid() != 0:
        _unavailable("needs root (network namespaces, /etc/hosts); run the tests as root")
    if not (shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()):
        _unavailable("slurmctld is not installed; run: sudo bash slurm/install-deps.sh")

    state_dir = Path(os.environ.get("AE_DIST_SLURM_STATE", DEFAULT_STATE_DIR))
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SLURM_CONF": str(state_dir / "etc" / "slurm.conf")}
    # Sessions running side by side (pytest-xdist workers) each hold a shared lock while they
    # use the cluster. The one that gets the lock alone at its end stops the cluster, if a test
    # session started it: the marker holds slurmctld's pid then, so a cluster restarted by hand
    # since is left alone.
    marker = state_dir / "started-by-pytest"
    ctld_pid = state_dir / "run" / "slurmctld.pid"
    users = open(state_dir / "pytest-users.lock", "w")  # noqa: SIM115 (held for the session)
    fcntl.flock(users, fcntl.LOCK_SH)
    try:
        running_before = _cluster_sh("status", env, timeout=60).returncode == 0
        pid_before = ctld_pid.read_text() if running_before else None
        # A no-op when the cluster is up; repairs a crashed or half-started one.
        result = _cluster_sh("start", env)
        if result.returncode != 0:
            _unavailable(f"`bash slurm/cluster.sh start` failed:\n{(result.stdout + result.stderr)[-4000:]}")
        started_here = ctld_pid.read_text() != pid_before
        if started_here:
            marker.write_text(ctld_pid.read_text())
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", env["SLURM_CONF"])
            yield _describe(env, state_dir, started_here=started_here)
    finally:
        fcntl.flock(users, fcntl.LOCK_UN)
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if marker.exists():
                ours = ctld_pid.exists() and marker.read_text() == ctld_pid.read_text()
                marker.unlink()
                if ours:
                    _cluster_sh("stop", env)
        except BlockingIOError:
            pass  # another session still uses the cluster; it stops it at its end
        users.close()


# ------------------------------------------------------------------------ stand-in commands, no cluster
# A stand-in `sbatch` (with `srun` and `sinfo`) that keeps the batch script submitit writes and runs it.
#
# `install_fake(folder, partitions)` writes the three commands into ``folder/bin``; put that folder first
# on PATH. The fake `sbatch` copies each script to ``folder/scripts/N.sh``, runs it with bash (the
# fake `srun` does nothing), so any text that escaped its quoting runs as a command, then answers
# as sbatch does: `Submitted batch job 4200+N`. `sbatch_value(line)` reads a `#SBATCH --key=value`
# line back as sbatch itself does (SLURM's `_get_argument`: quotes, backslash escapes even inside
# quotes, an unquoted `#` ends the line).

FAKE_SBATCH = """#!/bin/bash
n=$(ls "{scripts}" | grep -c '\\.sh$')
cp "$1" "{scripts}/$n.sh"
bash "$1" > "{scripts}/$n.out" 2>&1
echo "Submitted batch job $((4200 + n))"
"""


def install_fake(folder: Path, partitions: tuple[str, ...] = ("debug",)) -> Path:
    """The bin folder holding sbatch, srun and sinfo; scripts land in ``folder/scripts``."""
    bin_dir, scripts = folder / "bin", folder / "scripts"
    bin_dir.mkdir(parents=True)
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(scripts=scripts))
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 0\n")
    listing = "".join(f"{name}\n" for name in partitions)
    (folder / "partitions").write_text(listing)
    (bin_dir / "sinfo").write_text(f"#!/bin/bash\ncat {folder / 'partitions'}\n")
    for name in ("sbatch", "srun", "sinfo"):
        os.chmod(bin_dir / name, 0o755)
    return bin_dir


def fake_scripts(folder: Path) -> list[Path]:
    return sorted((folder / "scripts").glob("*.sh"), key=lambda p: int(p.stem))


def sbatch_options(script: str) -> dict[str, str | bool]:
    """Every `#SBATCH --key[=value]` line of a batch script, each value as sbatch reads it."""
    options: dict[str, str | bool] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            argument = sbatch_value(line[len("#SBATCH "):])
            key, sep, value = argument.partition("=")
            options[key[2:]] = value if sep else True
    return options


def sbatch_value(text: str) -> str:
    """One `#SBATCH` argument as SLURM 22.05's sbatch parses it (src/sbatch/opt.c, _get_argument)."""
    out, quote, escaped = [], "", False
    for char in text.lstrip():
        if char == "\n":
            break
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
            continue
        elif quote:
            if char == quote:
                quote = ""
                continue
        elif char in "\"'":
            quote = char
            continue
        elif char == "#" or char.isspace():
            break
        out.append(char)
    return "".join(out)

