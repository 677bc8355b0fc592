"""Elastic jobs on the real local SLURM cluster (slurm/cluster.sh: aenode1, aenode2, each in its own
network namespace): a lost node shrinks the job, the pre-timeout signal goes through torchrun and
requeues, a hung rank is named with its host and excluded on requeue; through submitit and sbatch.

    flock /tmp/ae-dist-slurm-tests.lock /work/main/.venv/bin/python -m pytest tests/test_elastic.py -q -s   # root

A lost node is the job's processes on aenode2 (its srun task: launch.elastic, torchrun and the
trainer) killed with SIGKILL, slurmd and slurmstepd left alone (the node itself stays up, as
after an OOM kill or a crashed driver), or aenode2's network link taken down (the node vanishes:
SLURM marks it DOWN, and it returns when the link is back).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_launch_slurm import wait_ended

from ae_dist.dist.incidents import failed_hosts, records
from ae_dist.errors import UsageError
from launch.node import check_torch
from launch.requeue import settle
from tests.helpers.commands import PYTHON, REPO, TINY, assert_bitwise_equal, clean_env, load_weights, wait_for
from tests.helpers.launcher import last_record as submitted
from tests.helpers.launcher import run_launch
from tests.helpers.run_files import checkpoint_steps, metrics
from tests.helpers.slurm import SlurmCluster

THREADS = ("train.threads=1",)  # the reference of tests/test_launch_slurm.py too: one uninterrupted run per session
ARGS = (*THREADS, "dist.timeout_s=10", "wandb.mode=disabled")  # 69 steps, at world size 2 or 1
ELASTIC = ["--nodes", "2", "--min-nodes", "1", "--cpus-per-task", "1", "--time", "10"]
SECOND = "aenode2"


@pytest.fixture
def env(slurm_cluster: SlurmCluster, tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path, SLURM_CONF=str(slurm_cluster.slurm_conf), AE_DIST_PYTHON=PYTHON,
                     PYTHONPATH=str(REPO))


@pytest.fixture
def reference(reference_runs) -> Path:
    """The shared uninterrupted run: the same experiment at world size 2 (torchrun, 2 processes)."""
    return reference_runs(THREADS, nproc=2)


def both_nodes_idle(cluster: SlurmCluster) -> None:
    """A --nodes=1-2 job gets both nodes only when both are free when it starts."""
    wait_for(lambda: set(cluster.run(["sinfo", "-h", "-N", "-o", "%t"]).stdout.split()) == {"idle"}, 180,
             "both nodes idle", interval=0.5)


def job_processes(job_id: str, node: str, trainer_only: bool = False) -> list[int]:
    """The job's processes in the node's namespace (those with its SLURM_JOB_ID), slurmstepd aside."""
    found = []
    out = subprocess.run(["ip", "netns", "pids", f"aeslurm-{node}"], capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in environ and comm != "slurmstepd" and (
                not trainer_only or b"ae_dist.train" in cmdline and b"torch.distributed.run" not in cmdline):
            found.append(pid)
    return found


def kill_node(job_id: str, node: str) -> int:
    pids = job_processes(job_id, node)
    assert pids, f"no process of job {job_id} on {node}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def link(node: str, state: str) -> None:
    subprocess.run(["ip", "-n", f"aeslurm-{node}", "link", "set", "eth0", state], check=True)


def excluded_hosts(cluster: SlurmCluster, job_id: str) -> str:
    shown = re.search(r"ExcNodeList=(\S+)", cluster.run(["scontrol", "show", "job", "-o", job_id], check=False).stdout)
    return shown[1].replace("(null)", "") if shown else ""


def world_sizes(run_dir: Path) -> list[int]:
    """metrics.jsonl's world sizes, consecutive repeats folded: [2, 1] for a job that shrank once."""
    sizes = [r["world_size"] for r in metrics(run_dir)]
    return [size for i, size in enumerate(sizes) if i == 0 or sizes[i - 1] != size]


def final(run_dir: Path) -> dict:
    return [r for r in metrics(run_dir) if r["kind"] == "epoch"][-1]


def assert_same_run(run_dir: Path, reference: Path, sizes: list[int]) -> str:
    """model.pt, no step twice, the reference's step count and test loss; the world sizes seen."""
    assert (run_dir / "model.pt").exists()
    records = metrics(run_dir)
    for kind in ("train", "epoch"):
        steps = [r["step"] for r in records if r["kind"] == kind]
        assert steps == sorted(set(steps)), steps
    ours, theirs = final(run_dir), final(reference)
    assert ours["step"] == theirs["step"] and abs(ours["test_loss"] - theirs["test_loss"]) <= 1e-3, (ours, theirs)
    assert world_sizes(run_dir) == sizes, world_sizes(run_dir)
    return (f"steps {ours['step']} (uninterrupted {theirs['step']}), test loss {ours['test_loss']:.5f} "
            f"(uninterrupted {theirs['test_loss']:.5f}, diff {abs(ours['test_loss'] - theirs['test_loss']):.1e}), "
            f"world sizes {world_sizes(run_dir)}")


def launch_elastic(cluster: SlurmCluster, tmp: Path, env: dict[str, str], *extra: str) -> str:
    both_nodes_idle(cluster)
    result = run_launch([*ELASTIC, *TINY, *ARGS, *extra, "run.dir=run"], tmp, env)
    assert result.returncode == 0, result.stdout + result.stderr
    return submitted(tmp).job_id


def first_checkpoint(run_dir: Path) -> int:
    return wait_for(lambda: checkpoint_steps(run_dir), 240, "the first checkpoint", interval=0.05)[0]


def back_in_service(cluster: SlurmCluster, node: str) -> None:
    """SLURM set the node DOWN while its link was down; return it to service as it was before the test."""
    if "down" in cluster.run(["sinfo", "-h", "-n", node, "-o", "%t"]).stdout:
        cluster.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"])
    wait_for(lambda: set(cluster.run(["sinfo", "-h", "-n", node, "-o", "%t"]).stdout.split()) == {"idle"}, 180,
             f"{node} back in service", interval=0.5)


def test_killed_node_shrinks_the_job_which_completes(slurm_cluster: SlurmCluster, tmp_path: Path, env, reference) -> None:
    started, run_dir = time.monotonic(), tmp_path / "run"
    job = launch_elastic(slurm_cluster, tmp_path, env)
    try:
        at_step = first_checkpoint(run_dir)
        killed = kill_node(job, SECOND)
        rows = wait_ended(slurm_cluster, job)
    finally:
        slurm_cluster.run(["scancel", job], check=False)
    assert "REQUEUED" not in rows and rows[-1] == "COMPLETED", rows
    figures = assert_same_run(run_dir, reference, [2, 1])
    lost = records(run_dir / "incidents", "silent")[-1]["silent"]
    assert [(s["rank"], s["host"], s["kind"]) for s in lost] == [(1, SECOND, "lost")], lost
    print(f"\n[kill -9] {killed} processes of job {job} on {SECOND} killed after checkpoint {at_step}; sacct {rows}; "
          f"{figures}; {time.monotonic() - started:.0f} s")


def test_node_whose_network_goes_shrinks_the_job(slurm_cluster: SlurmCluster, tmp_path: Path, env, reference) -> None:
    started, run_dir = time.monotonic(), tmp_path / "run"
    job = launch_elastic(slurm_cluster, tmp_path, env)
    try:
        at_step = first_checkpoint(run_dir)
        link(SECOND, "down")
        down = time.monotonic()
        wait_for(lambda: (run_dir / "model.pt").exists(), 300, "the survivors to finish", interval=0.5)
        survivors_s = time.monotonic() - down
        rows = wait_ended(slurm_cluster, job)
    finally:
        slurm_cluster.run(["scancel", job], check=False)
        link(SECOND, "up")
        back_in_service(slurm_cluster, SECOND)
    assert "REQUEUED" not in rows and rows[-1] == "COMPLETED", rows
    figures = assert_same_run(run_dir, reference, [2, 1])
    lost = records(run_dir / "incidents", "silent")[-1]["silent"]
    assert [(s["rank"], s["host"], s["kind"]) for s in lost] == [(1, SECOND, "lost")], lost
    print(f"\n[link down] {SECOND}'s eth0 down after checkpoint {at_step}; the survivors finished {survivors_s:.0f} s "
          f"later; sacct {rows}; {figures}; {SECOND} idle again; {time.monotonic() - started:.0f} s")


def test_pre_timeout_signal_through_torchrun_requeues_and_resumes_exactly(
        slurm_cluster: SlurmCluster, tmp_path: Path, env, reference) -> None:
    started, run_dir = time.monotonic(), tmp_path / "run"
    job = launch_elastic(slurm_cluster, tmp_path, env)
    try:
        first_checkpoint(run_dir)
        slurm_cluster.run(["scancel", "--signal=USR1", job])  # what --signal=USR1@120 sends before the limit
        rows = wait_ended(slurm_cluster, job)
    finally:
        slurm_cluster.run(["scancel", job], check=False)
    assert rows[0] == "REQUEUED" and rows[-1] == "COMPLETED", rows
    log = "".join(Path(p).read_text() for p in submitted(tmp_path).runs[0].logs if Path(p).exists())
    stopped = re.search(r"stopped by signal 10 at step (\d+); checkpoint written", log)
    assert stopped and "resumed from" in log and "requeueing job" in log, log[-3000:]
    assert world_sizes(run_dir) == [2]
    assert_bitwise_equal(load_weights(reference / "model.pt"), load_weights(run_dir / "model.pt"))
    print(f"\n[USR1] job {job}: checkpoint at step {stopped[1]}, sacct {rows}, model.pt bitwise equal to the "
          f"uninterrupted run; {time.monotonic() - started:.0f} s")


def test_continued_finished_run_stopped_by_the_pre_timeout_signal_is_requeued(
        slurm_cluster: SlurmCluster, tmp_path: Path, env, reference) -> None:
    """A finished run continued with a larger train.epochs, stopped by the pre-timeout signal during the
    continuation: requeued (its model.pt of 3 epochs notwithstanding), then COMPLETED at the new epoch count."""
    started, run_dir = time.monotonic(), tmp_path / "run"
    shutil.copytree(reference, run_dir)
    done = final(reference)["step"]
    job = launch_elastic(slurm_cluster, tmp_path, env, "train.epochs=4")
    try:
        wait_for(lambda: max(checkpoint_steps(run_dir)) > done, 300, "a checkpoint of the continuation", interval=0.05)
        slurm_cluster.run(["scancel", "--signal=USR1", job])  # what --signal=USR1@120 sends before the limit
        rows = wait_ended(slurm_cluster, job)
    finally:
        slurm_cluster.run(["scancel", job], check=False)
    assert rows[0] == "REQUEUED" and rows[-1] == "COMPLETED", rows
    log = "".join(Path(p).read_text() for p in submitted(tmp_path).runs[0].logs if Path(p).exists())
    assert "requeueing job" in log and "resumed from" in log, log[-3000:]
    assert final(run_dir)["epoch"] == 4 and json.loads((run_dir / "complete.json").read_text())["epoch"] == 4
    print(f"\n[continued, USR1] job {job}: sacct {rows}, completed at epoch {final(run_dir)['epoch']}, step "
          f"{final(run_dir)['step']}; {time.monotonic() - started:.0f} s")


def test_hung_rank_is_named_and_its_host_excluded_on_requeue(
        slurm_cluster: SlurmCluster, tmp_path: Path, env, reference) -> None:
    started, run_dir = time.monotonic(), tmp_path / "run"
    job = launch_elastic(slurm_cluster, tmp_path, env)
    stopped: list[int] = []
    try:
        first_checkpoint(run_dir)
        stopped = job_processes(job, SECOND, trainer_only=True)
        assert len(stopped) == 1, stopped
        os.kill(stopped[0], signal.SIGSTOP)
        at = time.monotonic()
        wait_for(lambda: records(run_dir / "incidents", "silent"), 70, "the incident (dist.timeout_s + a minute)")
        named_s = time.monotonic() - at
        excluded = wait_for(lambda: excluded_hosts(slurm_cluster, job), 120, "the requeued job's exclusion")
        rows = wait_ended(slurm_cluster, job)
    finally:
        slurm_cluster.run(["scancel", job], check=False)
        for pid in stopped:  # the launcher SIGKILLs it; in case a failure came first
            subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)
    assert excluded == SECOND
    assert rows[0] == "REQUEUED" and rows[-1] == "COMPLETED", rows
    assert slurm_cluster.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "NodeList"]).stdout.split()[-1] == "aenode1"
    incident = records(run_dir / "incidents", "silent")[0]
    assert [(s["rank"], s["host"], s["kind"]) for s in incident["silent"]] == [(1, SECOND, "hung")], incident
    stacks = sorted(p.name for p in (run_dir / "incidents").glob(f"{incident['stamp']}-rank*.txt"))
    assert stacks == [f"{incident['stamp']}-rank0-aenode1.txt"], stacks  # every live rank: rank 0 alone here
    assert "Every thread now (faulthandler)" in (run_dir / "incidents" / stacks[0]).read_text()
    log = "".join(Path(p).read_text() for p in submitted(tmp_path).runs[0].logs if Path(p).exists())
    line = next(ln for ln in log.splitlines() if ln.startswith("error: rank 1 on aenode2 stopped answering (hung"))
    assert "dist.timeout_s=10" in line
    assert_same_run(run_dir, reference, [2, 1])
    status = run_launch(["status", job], tmp_path, env).stdout
    assert f"incident {incident['stamp']}: rank 1 on {SECOND} (hung)" in status and f"excluded hosts: {SECOND}" in status
    print(f"\n[SIGSTOP] rank 1 on {SECOND} named {named_s:.0f} s after SIGSTOP (dist.timeout_s=10): {line[:150]}...; "
          f"stacks {stacks}; requeued with ExcNodeList={excluded}; sacct {rows}, finished on aenode1 at world size 1; "
          f"{time.monotonic() - started:.0f} s")


def test_sbatch_elastic_job_survives_a_killed_node(slurm_cluster: SlurmCluster, tmp_path: Path, env, reference) -> None:
    started, run_dir = time.monotonic(), tmp_path / "run"
    both_nodes_idle(slurm_cluster)
    result = subprocess.run(["sbatch", "--parsable", "--nodes=1-2", "--cpus-per-task=1", "--time=10",
                             f"--output={tmp_path}/slurm-%j.out", str(REPO / "slurm" / "train-elastic.sbatch"), *TINY,
                             *ARGS, f"run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    try:
        at_step = first_checkpoint(run_dir)
        killed = kill_node(job, SECOND)
        rows = wait_ended(slurm_cluster, job)
    finally:
        slurm_cluster.run(["scancel", job], check=False)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert "REQUEUED" not in rows and rows[-1] == "COMPLETED", (rows, log[-3000:])
    assert "--nnodes=1:2" in log and "--signals-to-handle=" in log and "elastic: run complete" in log
    figures = assert_same_run(run_dir, reference, [2, 1])
    print(f"\n[sbatch, kill -9] {killed} processes on {SECOND} after checkpoint {at_step}; sacct {rows}; {figures}; "
          f"{time.monotonic() - started:.0f} s")


# Without a cluster: the decisions alone -----------------------------------------------------------------------


def test_old_torch_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError) as err:
        check_torch("2.9.1+cu128")
    assert err.value.lines() == ["error: torch 2.9.1+cu128's torchrun has no --signals-to-handle (added in torch 2.10): "
                                 "SLURM's pre-timeout signal would end torchrun before the workers checkpoint "
                                 "(--min-nodes): install torch>=2.10 where the job runs, or submit without --min-nodes "
                                 "(one srun task per GPU)"]
    check_torch("2.10.0")


def test_settle_budget_and_completion(tmp_path: Path) -> None:
    env = {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"}
    incidents = tmp_path / "incidents"
    incidents.mkdir()
    for stamp, restart, host in (("20260101-000000", "0", "n1"), ("20260101-000100", "1", "n2"), ("20260101-000200", "1", "n3")):
        (incidents / f"{stamp}-silent.json").write_text(json.dumps(
            {"kind": "silent", "job": "slurm-77", "restart": restart, "silent": [{"rank": 1, "host": host, "kind": "hung"}]}))
    assert failed_hosts(incidents, "slurm-77", "1") == ["n2", "n3"] and failed_hosts(incidents, "slurm-77") == ["n1", "n2", "n3"]
    assert settle(137, tmp_path, max_node_failures=2, max_requeues=None, env=env) == 1  # 3 hosts failed: not requeued
    (tmp_path / "model.pt").write_bytes(b"")  # weights alone (kept from before a continuation): not complete
    assert settle(137, tmp_path, max_node_failures=2, max_requeues=None, env=env) == 1
    (tmp_path / "complete.json").write_text('{"epoch": 3, "step": 69}')  # the wrap-up's record
    assert settle(137, tmp_path, max_node_failures=2, max_requeues=None, env=env) == 0  # the survivors finished


@pytest.mark.fast
def test_a_node_stopped_by_the_step_end_says_what_happened(tmp_path: Path) -> None:
    """When the first node dies, SLURM ends the step with SIGTERM on the survivor: its line names that, says which
    checkpoint this start wrote (if any), and claims no requeue (the batch script's settle decides, if it runs)."""
    from launch.node import stopped_line

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "step_00000010.pt").write_bytes(b"")
    os.utime(checkpoints / "step_00000010.pt", (1, 1))  # written by an earlier start
    started = time.time() - 1
    line = stopped_line("aenode2", signal.SIGTERM, checkpoints, started)
    assert line == ("torchrun on aenode2 stopped by signal 15 (SIGTERM: SLURM ends the job step: a cancel, the time "
                    "limit, or the job ending on another node); no checkpoint was written since this start; exit 75")
    (checkpoints / "step_00000030.pt").write_bytes(b"")
    line = stopped_line("aenode2", signal.SIGUSR1, checkpoints, started)
    assert "(SIGUSR1: the pre-timeout or preemption warning); the newest checkpoint of this start is step_00000030.pt" \
        in line and "requeue" not in line, line
