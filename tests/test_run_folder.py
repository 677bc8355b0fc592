"""One writer per run folder, no orphan workers, and a run folder that never lies about its weights.

Real processes: a torchrun agent killed alone, a second launch on a live run's folder, a
lease held from another host (a process with its own hostname, in a node namespace of the
local SLURM cluster), config changes on resume, Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from ae_dist.errors import EXIT_INTERRUPTED, EXIT_USAGE
from tests.helpers.commands import REPO, TINY, clean_env, hook_env, load_weights, run_train, train_cmd, wait_for
from tests.helpers.faults import error_lines, one_clear_line, report
from tests.helpers.processes import Job, stop_process
from tests.helpers.run_files import checkpoint_steps


def same_weights(run_dir: Path, reference: Path) -> None:
    ours, theirs = load_weights(run_dir / "model.pt"), load_weights(reference / "model.pt")
    assert list(ours) == list(theirs)
    for key in ours:
        assert ours[key].equal(theirs[key]), key


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def folder_digest(run_dir: Path, but: str = "") -> dict[str, str]:
    """Every file below ``run_dir`` (but the folder ``but``) -> its sha256."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and not (but and p.relative_to(run_dir).parts[0] == but)}


# 1. kill -9 of the torchrun agent alone: its workers follow it within seconds ------------------

def test_workers_die_with_a_killed_torchrun_agent_and_the_rerun_matches(reference_runs, tmp_path: Path) -> None:
    reference = reference_runs((), 2)
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}"]
    job = Job.start(args, tmp_path, nproc=2)
    wait_for(lambda: checkpoint_steps(run_dir) or job.check_running(), 240, "the first checkpoint")
    workers = job.ranks()
    assert len(workers) == 2
    os.kill(job.procs[0].pid, signal.SIGKILL)  # the agent alone: its workers sit in sessions of their own
    job.procs[0].wait(30)
    wait_for(lambda: all(gone(pid) for pid in workers.values()), 30, "both orphaned workers to exit")
    steps_then = checkpoint_steps(run_dir)
    rerun = run_train(args, tmp_path, nproc=2)
    assert "taking over the lease" in rerun.stderr, rerun.stderr[-2000:]
    same_weights(run_dir, reference)
    info = json.loads((run_dir / "run.json").read_text())  # both starts recorded: the torchrun command, hosts, code
    host = socket.gethostname()
    assert [(s["hosts"], s["world_size"]) for s in info["launches"]] == [([host, host], 2)] * 2, info["launches"]
    for start in info["launches"]:
        assert "torch.distributed.run --standalone --nproc_per_node=2 -m ae_dist.train" in start["command"], start
        assert len(start["git_sha"]) == 40 and isinstance(start["git_dirty"], bool) and start["job"].startswith("torchrun-")
    assert info["command"] == info["launches"][0]["command"] and info["git_sha"] == info["launches"][0]["git_sha"]
    report("kill -9 of the torchrun agent alone", f"SIGKILL to torchrun's agent (2 workers) after checkpoint "
           f"{steps_then[0]}", "both workers saw their parent gone and exited within 30 s, writing nothing more; "
           "the rerun took over the lease and ended bitwise equal", "steps since the last checkpoint", "none")


# 2. A second launch on a live run's folder stops before touching it ----------------------------

def test_a_second_launch_on_a_live_folder_exits_2_and_the_first_run_is_untouched(reference_runs, tmp_path: Path) -> None:
    reference = reference_runs((), 1)
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}"]
    first = Job.start(args, tmp_path)
    first.wait_for_step(5)
    stop_process(first.procs[0].pid)  # alive, holding the lease, for as long as the second launches take
    before = folder_digest(run_dir, but="wandb")  # the first run's wandb-core, not stopped, still writes there
    for nproc in (1, 2):
        second = subprocess.run(train_cmd(args, nproc), cwd=REPO, env=clean_env(tmp_path), capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == (EXIT_USAGE if nproc == 1 else 1), second.stderr[-3000:]
        if nproc == 1:
            line = one_clear_line(second.stderr)
        else:  # torchrun adds its own report (a ChildFailedError traceback) after the workers' lines
            [line] = error_lines(second.stderr)
        assert line.startswith(f"error: run.dir is in use by {os.uname().nodename} pid {first.procs[0].pid} "
                               "(job none) since "), line
        assert line.endswith("(run.dir): wait for it, cancel it, or choose another run.dir"), line
        if nproc == 2:
            # the root cause torchrun names is a worker's exit 2 (whichever rank ended first; it stops the other)
            assert re.search(r"rank\s*: [01] \(local_rank: [01]\)\s+exitcode\s*: 2", second.stderr), second.stderr[-3000:]
    assert folder_digest(run_dir, but="wandb") == before
    os.kill(first.procs[0].pid, signal.SIGCONT)
    assert first.wait() == [0], first.output()[-3000:]
    same_weights(run_dir, reference)
    report("a second launch on a live run's folder", "`python -m ae_dist.train` and `torchrun --nproc_per_node=2` "
           "with the run.dir of a live run", "each exits 2 (torchrun: 1, its workers 2) with `error: run.dir is in "
           "use by HOST pid PID (job none) since TIME (run.dir): ...`; no file of the folder changed; the first run "
           "ended bitwise equal", "none", "none")


def test_a_rerun_after_kill_9_takes_the_lease_over_and_finishes(reference_runs, tmp_path: Path) -> None:
    reference = reference_runs((), 1)
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}"]
    job = Job.start(args, tmp_path)
    wait_for(lambda: checkpoint_steps(run_dir) or job.check_running(), 240, "the first checkpoint")
    job.signal(signal.SIGKILL)
    job.wait()
    assert (run_dir / ".lease").exists()
    rerun = run_train(args, tmp_path)
    assert rerun.stderr.count("warning: taking over the lease of ") == 1, rerun.stderr[-2000:]
    assert not (run_dir / ".lease").exists()
    same_weights(run_dir, reference)


@pytest.mark.slurm
def test_a_lease_held_on_another_host_is_respected_until_its_heartbeat_is_stale(slurm_cluster, reference_runs,
                                                                                 tmp_path: Path) -> None:
    reference = reference_runs((), 1)
    node = slurm_cluster.nodes[0]
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}"]
    log = tmp_path / "holder.log"
    other_host = ["nsenter", f"--net=/run/netns/aeslurm-{node}", "unshare", "--uts", "sh", "-c",
                  f'hostname {node} && exec "$@"', "sh", *train_cmd(args)]
    with open(log, "w") as out:
        holder = subprocess.Popen(other_host, cwd=REPO, env=clean_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: checkpoint_steps(run_dir) or holder.poll() is not None, 240, "the holder's first checkpoint")
        stop_process(holder.pid)  # its heartbeat stops; from here it looks like a hung or lost node
        lease = json.loads((run_dir / ".lease").read_text())
        assert lease["host"] == node
        refused = subprocess.run(train_cmd(args), cwd=REPO, env=clean_env(tmp_path), capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == EXIT_USAGE
        assert one_clear_line(refused.stderr).startswith(f"error: run.dir is in use by {node} pid {holder.pid} ")
        stale_s = 5
        wait_for(lambda: __import__("time").time() - (run_dir / ".lease").stat().st_mtime > stale_s, 60,
                 "the lease's heartbeat to go stale")
        taken = run_train([*args, f"run.lease_stale_s={stale_s}"], tmp_path)
        assert f"warning: taking over the lease of {node} pid {holder.pid}" in taken.stderr, taken.stderr[-2000:]
    finally:
        holder.kill()
        holder.wait(30)
    same_weights(run_dir, reference)


# 3. Config changes on resume: refused, or accepted with train.resume=changed and recorded ---------

def test_a_finished_run_refuses_a_changed_lr_and_stays_byte_identical(reference_runs, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference_runs((), 1), run_dir)
    before = folder_digest(run_dir)
    result = run_train([*TINY, f"run.dir={run_dir}", "optim.lr=3e-3"], tmp_path, check=False)
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    line = one_clear_line(result.stderr)
    assert "optim.lr 0.001 -> 0.003" in line and "train.resume=changed" in line, line
    assert folder_digest(run_dir) == before
    same = run_train([*TINY, f"run.dir={run_dir}", "wandb.mode=disabled"], tmp_path)  # output-only change: passes
    assert "run complete" in same.stdout and folder_digest(run_dir) == before


def test_longer_epochs_continue_a_finished_run_and_are_recorded(reference_runs, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference_runs((), 1), run_dir)
    run_train([*TINY, f"run.dir={run_dir}", "train.epochs=4"], tmp_path)
    epochs = [r["epoch"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3, 4]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 4
    history = [json.loads(line) for line in (run_dir / "config-history.jsonl").read_text().splitlines()]
    assert history[0]["changed"] == {"train.epochs": {"old": 3, "new": 4}} and history[0]["step"] == 69


def test_a_changed_lr_mid_run_needs_consent_then_continues_and_is_recorded(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}"]
    first = run_train([*args, "train.max_steps=20"], tmp_path)
    assert "reached train.max_steps=20 at step 20" in first.stdout
    refused = run_train([*args, "optim.lr=3e-3"], tmp_path, check=False)
    assert refused.returncode == EXIT_USAGE and "optim.lr 0.001 -> 0.003" in one_clear_line(refused.stderr)
    run_train([*args, "optim.lr=3e-3", "train.resume=changed"], tmp_path)
    history = [json.loads(line) for line in (run_dir / "config-history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["step"] == 20, history
    assert history[0]["changed"]["optim.lr"] == {"old": 0.001, "new": 0.003}
    assert "ae_dist.train" in history[0]["command"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.003


# 4. Ctrl-C: a checkpoint at the next step boundary, exit 130 ------------------------------------

def test_ctrl_c_checkpoints_exits_130_and_the_rerun_matches(reference_runs, tmp_path: Path) -> None:
    reference = reference_runs((), 1)
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}", "checkpoint.every_steps=1000"]
    job = Job.start(args, tmp_path)
    signalled = job.wait_for_step(10)
    job.signal(signal.SIGINT)
    assert job.wait() == [EXIT_INTERRUPTED], job.output()[-3000:]
    out = job.output()
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    stop = int(re.search(r"stopped by signal 2 at step (\d+); checkpoint written", out)[1])
    assert signalled <= stop and checkpoint_steps(run_dir)[-1] == stop
    run_train(args, tmp_path)
    same_weights(run_dir, reference)
    report("Ctrl-C (SIGINT)", f"SIGINT to `python -m ae_dist.train` at step {signalled}",
           f"`interrupted: stopping at the next step boundary ...`, checkpoint at step {stop}, exit 130; the rerun "
           "ended bitwise equal (a second Ctrl-C stops at once)", "0 steps", "none")


def handles(pid: int, signum: int) -> bool:
    """The process has a handler for ``signum`` (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


SLOW_START = ["data.name=synthetic", "data.synthetic_train=1500000"]  # seconds of start-up before the first step


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # steps from the 6th on take 60 s: both Ctrl-Cs land inside one step, however busy the machine
    job = Job.start([*TINY, f"run.dir={run_dir}"], tmp_path,
                    env=hook_env(tmp_path, "slow_steps", SLOW_STEP_S="60", SLOW_FROM_STEP="6"))
    wait_for(lambda: "slow step 6: 60 s" in job.output() or job.check_running(), 120, "step 6 to be running")
    job.signal(signal.SIGINT)  # inside step 6: the next step boundary is 60 s away
    wait_for(lambda: "interrupted: stopping at the next step boundary" in job.output() or job.check_running(), 50,
             "the first Ctrl-C to be seen")
    job.signal(signal.SIGINT)  # within the 60 s step: the first has not been acted on yet
    assert job.wait(30) == [EXIT_INTERRUPTED]
    assert "interrupted again: stopping now" in job.output() and "Traceback" not in job.output(), job.output()
    assert "checkpoint written" not in job.output() and checkpoint_steps(run_dir) == [], job.output()


def test_the_launcher_refuses_a_folder_that_a_live_run_holds(tmp_path: Path) -> None:
    from ae_dist.run.lease import Lease

    run_dir = tmp_path / "run"
    held = Lease(run_dir, 60)
    held.take()  # this test process holds it, alive on this host
    try:
        result = subprocess.run([sys.executable, "-m", "launch", "--executor", "local", "--config", "digits",
                                 f"run.dir={run_dir}"], cwd=tmp_path, env=clean_env(tmp_path), capture_output=True,
                                text=True, timeout=120)
    finally:
        held.release()
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert one_clear_line(result.stderr).startswith(f"error: run.dir is in use by {os.uname().nodename} pid {os.getpid()} ")
    assert not (tmp_path / "runs").exists() and not (run_dir / "submitit").exists()
