"""The local SLURM cluster (slurm/cluster.sh) does what the launchers rely on: real jobs on two
nodes with their own hostnames and addresses, accounting through sacct, requeue, pre-timeout signals.

    /work/main/.venv/bin/python -m pytest tests/test_slurm_cluster.py -q   # as root
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers.commands import wait_for
from tests.helpers.slurm import CLUSTER_SH, SlurmCluster

pytestmark = pytest.mark.slurm


def node_states(cluster: SlurmCluster) -> dict[str, str]:
    out = cluster.run(["sinfo", "-h", "-N", "-p", cluster.default_partition, "-o", "%N %t"]).stdout
    return dict(line.split() for line in out.splitlines())


def test_both_nodes_idle(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.nodes == ("aenode1", "aenode2")
    assert len(slurm_cluster.partitions) >= 2, "a second partition keeps 'partition not listed' checks meaningful"
    # Jobs of other tests may still be finishing; idle is what an empty cluster settles to.
    wait_for(lambda: set(node_states(slurm_cluster).values()) == {"idle"}, 60, "both nodes idle")
    assert node_states(slurm_cluster) == {"aenode1": "idle", "aenode2": "idle"}


def test_srun_runs_one_task_per_node_with_the_node_hostnames(slurm_cluster: SlurmCluster) -> None:
    out = slurm_cluster.run(["srun", "-N2", "-n2", "--ntasks-per-node=1", "-l", "hostname"]).stdout
    by_task = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert sorted(by_task.values()) == list(slurm_cluster.nodes)
    assert by_task["0"] == slurm_cluster.nodes[0]  # task 0 (MASTER_ADDR for gloo) on the first node


TCP_CHECK = textwrap.dedent("""
    # Task 0 listens on its node; task 1 connects to it by node name, as gloo does with MASTER_ADDR.
    import os, socket, sys, time
    rank, port, master = int(os.environ["SLURM_PROCID"]), int(sys.argv[1]), sys.argv[2]
    deadline = time.monotonic() + 30
    if rank == 0:
        server = socket.create_server(("0.0.0.0", port))
        server.settimeout(30)
        conn, (peer, _) = server.accept()
        conn.settimeout(30)
        print(f"server on {socket.gethostname()} got {conn.recv(100).decode()!r} from {peer}", flush=True)
        conn.sendall(b"ack")
    else:
        while True:
            try:
                conn = socket.create_connection((master, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        conn.sendall(f"hello from {socket.gethostname()}".encode())
        print(f"client on {socket.gethostname()} got {conn.recv(100).decode()!r}", flush=True)
""")


def test_node2_opens_a_tcp_connection_to_node1(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = tmp_path / "tcp_check.py"
    script.write_text(TCP_CHECK)
    first, second = slurm_cluster.nodes
    port = str(20000 + os.getpid() % 20000)  # a free port on a node of its own, most likely
    out = slurm_cluster.run(["srun", "-N2", "-n2", "--ntasks-per-node=1", "--time=2", "-l",
                             sys.executable, str(script), port, first], timeout=90).stdout
    lines = sorted(out.strip().splitlines())
    assert lines == [f"0: server on {first} got 'hello from {second}' from {slurm_cluster.node_addrs[second]}",
                     f"1: client on {second} got 'ack'"], out


def test_sacct_reports_a_finished_batch_job_completed(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "job.out"
    job_id = slurm_cluster.sbatch("-N1", "-o", str(output), "--wrap", "hostname; echo done")
    assert slurm_cluster.wait_state(job_id, ["COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL"]) == "COMPLETED"
    hostname, done = output.read_text().split()
    assert hostname in slurm_cluster.nodes and done == "done"
    exit_code = slurm_cluster.run(["sacct", "-j", job_id, "-n", "-X", "-o", "ExitCode"]).stdout.strip()
    assert exit_code == "0:0"


REQUEUE_JOB = """#!/bin/bash
echo "run ${SLURM_RESTART_COUNT:-0} on $(hostname)"
# The first run waits to be requeued; the second finishes.
if [ "${SLURM_RESTART_COUNT:-0}" -eq 0 ]; then sleep 300; fi
"""


def test_scontrol_requeue_runs_the_job_again(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script, output = tmp_path / "requeue.sh", tmp_path / "requeue.out"
    script.write_text(REQUEUE_JOB)
    job_id = slurm_cluster.sbatch("--requeue", "--open-mode=append", "-o", str(output), str(script))
    try:
        wait_for(lambda: output.exists() and "run 0" in output.read_text(), 60, "the first run to start")
        slurm_cluster.run(["scontrol", "requeue", job_id])
        # A requeued job may start again only after AuthInfo's cred_expire (10 s here).
        assert slurm_cluster.wait_state(job_id, ["COMPLETED", "FAILED", "CANCELLED"], timeout=90) == "COMPLETED"
    finally:
        slurm_cluster.run(["scancel", job_id], check=False)
    runs = [line for line in output.read_text().splitlines() if line.startswith("run ")]
    assert [line.split()[1] for line in runs] == ["0", "1"], output.read_text()
    history = slurm_cluster.run(["sacct", "-j", job_id, "-n", "-X", "-D", "-P", "-o", "State"]).stdout.split()
    assert history == ["REQUEUED", "COMPLETED"]


SIGNAL_JOB = """#!/bin/bash
trap 'echo "USR1 after $SECONDS s"; exit 0' USR1
echo started
for _ in $(seq 1 600); do sleep 0.2; done   # short sleeps: bash runs the trap between them
echo "no signal"
"""


def test_signal_before_the_time_limit_reaches_the_batch_script(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script, output = tmp_path / "signal.sh", tmp_path / "signal.out"
    script.write_text(SIGNAL_JOB)
    # USR1 is due 5 s after the start; slurmctld checks time limits every 30 s.
    job_id = slurm_cluster.sbatch("--time=1", "--signal=B:USR1@55", "-o", str(output), str(script))
    try:
        assert slurm_cluster.wait_state(job_id, ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"], timeout=90) == "COMPLETED"
    finally:
        slurm_cluster.run(["scancel", job_id], check=False)
    lines = output.read_text().splitlines()
    assert lines[0] == "started" and lines[1].startswith("USR1 after "), lines


def test_second_start_is_a_no_op(slurm_cluster: SlurmCluster) -> None:
    pids_before = sorted(p.read_text() for p in (slurm_cluster.state_dir / "run").glob("*.pid"))
    started = time.monotonic()
    result = subprocess.run(["bash", str(CLUSTER_SH), "start"], env=slurm_cluster.env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "up: nodes aenode1 aenode2" in result.stdout
    assert time.monotonic() - started < 10
    assert sorted(p.read_text() for p in (slurm_cluster.state_dir / "run").glob("*.pid")) == pids_before
