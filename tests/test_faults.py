"""Fault injection (issue 5): what clusters do to jobs, done to real trainer processes.

Every test runs the trainer as real processes on CPU with gloo (one process, torchrun, or
one process per rank as `srun` starts them), injects one fault, and checks that no work
and no data is lost: the final weights are bitwise those of an uninterrupted run, the
newest checkpoint is complete and loads with weights_only=True, metrics.jsonl holds each
record once. Each test adds a row to the README's fault table (benchmarks/faults_table.py).
The bad-input fuzzing (fault 8) is tests/test_fuzz_config.py.

    pytest tests/test_faults.py
"""

from __future__ import annotations

import contextlib
import gzip
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ae_dist import data
from ae_dist.config import DataConfig
from ae_dist.dist.preemption import EXIT_PREEMPTED
from ae_dist.errors import UsageError
from ae_dist.run.checkpoint import load_latest
from benchmarks.idx_files import write_fashion_mnist
from tests.helpers.commands import (
    PYTHON,
    REPO,
    RUN_TIMEOUT,
    TINY,
    assert_bitwise_equal,
    clean_env,
    hook_env,
    load_weights,
    train_cmd,
)
from tests.helpers.faults import fill_disk, one_clear_line, report, shown, tmpfs
from tests.helpers.processes import Job, stop_process
from tests.helpers.run_files import (
    checkpoint,
    checkpoint_steps,
    finite_checkpoint,
    leftovers,
    logged_steps,
    metrics,
    metrics_intact,
)
from tests.helpers.schedule import schedule

# One metrics record per step, so the tests see exactly how far a run got; no W&B (it doubles the
# start-up time of a run here; W&B across kills and resumes is tests/test_wandb.py's subject).
EVERY_STEP = ["train.log_every=1", "wandb.mode=disabled"]
TINY_STEPS = schedule(TINY)  # 3 epochs of 23 steps, checkpoints every 10 steps
EVERY_STEP_LOGGED = schedule([*TINY, *EVERY_STEP])


def same_weights(run_dir: Path, reference: Path) -> None:
    assert_bitwise_equal(load_weights(run_dir / "model.pt"), load_weights(reference / "model.pt"))


# 1. kill -9 of one rank under torchrun --max-restarts=2 ------------------------------------------


@contextlib.contextmanager
def holding_port(port: int) -> Iterator[None]:
    """Hold ``port`` (if it is free) so that a run that needed it would fail."""
    with socket.socket() as sock:
        with contextlib.suppress(OSError):
            sock.bind(("", port))
            sock.listen()
        yield


def test_kill_9_of_one_rank_torchrun_restarts_the_workers_and_matches(reference_runs, tmp_path: Path) -> None:
    """torchrun restarts both workers; they resume from the newest checkpoint and end bitwise
    equal to an uninterrupted run. Port 29500 (torchrun's default) is held meanwhile:
    --standalone picks a free port for its store (fault 6)."""
    reference = reference_runs((), 2)
    run_dir = tmp_path / "run"
    with holding_port(29500):
        job = Job.start([*TINY, f"run.dir={run_dir}", *EVERY_STEP], tmp_path, nproc=2, torchrun_args=("--max-restarts=2",))
        job.wait_for_step(12)  # past checkpoint step 10, inside epoch 1
        job.signal(signal.SIGKILL, ranks=[1])
        done = max(logged_steps(run_dir))  # the restarted workers log nothing for seconds yet
        assert job.wait() == [0], job.output()[-4000:]
    resumed = [int(step) for step in re.findall(r"resumed from \S+step_(\d+)\.pt", job.output())]
    assert len(resumed) == 1 and resumed[0] <= done < TINY_STEPS.total, (resumed, done)
    assert "exitcode: -9" in job.output() or "exitcode  : -9" in job.output()
    same_weights(run_dir, reference)
    lost = metrics_intact(run_dir, EVERY_STEP_LOGGED)
    report("kill -9 of one rank", "SIGKILL to rank 1 of `torchrun --nproc_per_node=2 --max-restarts=2` at step "
           f"{done} ({TINY_STEPS.where(done)})", f"torchrun restarted both workers once; they resumed from step {resumed[0]}; "
           "final weights bitwise equal to an uninterrupted run", f"{done - resumed[0]} steps ({resumed[0] + 1}-{done})",
           lost)


# 2. SIGTERM / SIGUSR1 (SLURM's pre-timeout signal): checkpoint, exit 75, the rerun matches ----------


def stopped_at(output: str, signum: int) -> int:
    found = re.findall(rf"stopped by signal {signum} at step (\d+)", output)
    assert len(found) == 1, output[-3000:]
    return int(found[0])


def test_sigterm_to_one_process_checkpoints_exits_75_and_the_rerun_matches(reference_runs, tmp_path: Path) -> None:
    reference = reference_runs((), 1)
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}", *EVERY_STEP]
    job = Job.start(args, tmp_path)
    signalled = job.wait_for_step(12)
    job.signal(signal.SIGTERM)
    assert job.wait() == [EXIT_PREEMPTED], job.output()[-3000:]
    stop = stopped_at(job.output(), signal.SIGTERM)
    assert signalled <= stop < TINY_STEPS.total and checkpoint_steps(run_dir)[-1] == stop
    finite_checkpoint(checkpoint(run_dir, stop))
    rerun = Job.start(args, tmp_path)
    assert rerun.wait() == [0], rerun.output()[-3000:]
    assert f"resumed from {checkpoint(run_dir, stop)}" in rerun.output()
    same_weights(run_dir, reference)
    report("SIGTERM, one process", f"SIGTERM to `python -m ae_dist.train` at step {signalled}",
           f"checkpoint at step {stop} (the next step boundary), exit 75; the rerun resumed there and ended "
           "bitwise equal", "0 steps", metrics_intact(run_dir, EVERY_STEP_LOGGED))


def test_sigterm_to_every_rank_checkpoints_each_exits_75_and_the_rerun_matches(reference_runs, tmp_path: Path) -> None:
    """As SLURM signals every task of a step: two ranks started as srun starts them, one process each."""
    reference = reference_runs((), 2)
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}", *EVERY_STEP]
    job = Job.start(args, tmp_path, nproc=2, srun_like=True)
    signalled = job.wait_for_step(12)
    job.signal(signal.SIGTERM)
    assert job.wait() == [EXIT_PREEMPTED, EXIT_PREEMPTED], job.output(0)[-2000:] + job.output(1)[-2000:]
    stop = stopped_at(job.output(0), signal.SIGTERM)
    assert signalled <= stop < TINY_STEPS.total and checkpoint_steps(run_dir)[-1] == stop
    finite_checkpoint(checkpoint(run_dir, stop))
    rerun = Job.start(args, tmp_path, nproc=2, srun_like=True)
    assert rerun.wait() == [0, 0], rerun.output(0)[-3000:]
    same_weights(run_dir, reference)
    report("SIGTERM to every rank", f"SIGTERM to both ranks (one process each, as srun starts them) at step {signalled}",
           f"both ranks agreed on step {stop}, rank 0 wrote its checkpoint, each exited 75; the rerun ended bitwise "
           "equal", "0 steps", metrics_intact(run_dir, EVERY_STEP_LOGGED))


def test_sigusr1_to_rank_0_alone_under_torchrun_stops_both_ranks(reference_runs, tmp_path: Path) -> None:
    """SLURM's pre-timeout signal reaching rank 0 only: both ranks stop at the same step and
    exit 75 each; torchrun itself then exits 1 and lists both exit codes."""
    reference = reference_runs((), 2)
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}", *EVERY_STEP]
    job = Job.start(args, tmp_path, nproc=2)
    signalled = job.wait_for_step(12)
    job.signal(signal.SIGUSR1, ranks=[0])
    assert job.wait() == [1], job.output()[-3000:]
    assert re.findall(r"^\s+exitcode\s+: (-?\d+)", job.output(), re.M) == ["75", "75"], job.output()[-3000:]
    stop = stopped_at(job.output(), signal.SIGUSR1)
    assert signalled <= stop < TINY_STEPS.total and checkpoint_steps(run_dir)[-1] == stop
    rerun = Job.start(args, tmp_path, nproc=2)
    assert rerun.wait() == [0], rerun.output()[-3000:]
    same_weights(run_dir, reference)
    report("SIGUSR1 to rank 0 alone", f"SIGUSR1 (SLURM `--signal`) to rank 0 only of a 2-rank torchrun at step "
           f"{signalled}", f"both ranks stopped at step {stop} (checked every 10 steps) and exited 75; torchrun "
           "exited 1 listing both; the rerun ended bitwise equal", "0 steps", metrics_intact(run_dir, EVERY_STEP_LOGGED))


# 3. Disk full during a checkpoint write ------------------------------------------------------------


def test_disk_full_during_a_checkpoint_write(reference_runs, tmp_path: Path) -> None:
    """run.dir on a 32 MiB tmpfs; after checkpoint step 10 the trainer is frozen, the disk
    filled to 1 MiB (less than one checkpoint, 2.6 MB), and the trainer let go."""
    reference = reference_runs((), 1)
    with tmpfs(tmp_path / "disk", "32m") as disk:
        run_dir = disk / "run"
        args = [*TINY, f"run.dir={run_dir}", *EVERY_STEP]
        job = Job.start(args, tmp_path)
        job.wait_for_step(11)
        stop_process(job.procs[0].pid)
        good = checkpoint_steps(run_dir)[-1]
        filler = fill_disk(disk, leave_bytes=1 << 20)
        job.signal(signal.SIGCONT)
        assert job.wait() == [1], job.output()[-3000:]
        line = one_clear_line(job.output())
        failed = int(re.search(r"could not write checkpoint \S+step_(\d+)\.pt: No space left on device", line)[1])
        done = max(logged_steps(run_dir))
        assert failed > good and checkpoint_steps(run_dir)[-1] == good
        path, _ = load_latest(run_dir / "checkpoints", warn=pytest.fail)
        assert path == checkpoint(run_dir, good)
        finite_checkpoint(path)
        assert leftovers(run_dir) == []  # no partial file where a resume (or anyone) would find it
        filler.unlink()
        rerun = Job.start(args, tmp_path)
        assert rerun.wait() == [0], rerun.output()[-3000:]
        assert f"resumed from {path}" in rerun.output()
        same_weights(run_dir, reference)
        lost = metrics_intact(run_dir, EVERY_STEP_LOGGED)
    report("disk full in a checkpoint write", f"run.dir on a 32 MiB tmpfs, filled to 1 MiB free after step {good}",
           f"{shown(line, run_dir)} exit 1; checkpoint {good} intact and loadable, no temporary file left; after freeing "
           "space the rerun ended bitwise equal", f"{done - good} steps ({good + 1}-{done})", lost)


def test_disk_full_while_writing_metrics_and_pictures(tmp_path: Path) -> None:
    """Checkpoints only at epoch ends; after the first, the disk is filled completely: the
    next write of metrics.jsonl, a picture or W&B's files fails, in one line."""
    with tmpfs(tmp_path / "disk", "32m") as disk:
        run_dir = disk / "run"
        # W&B offline here: its files live in run.dir too
        job = Job.start([*TINY, f"run.dir={run_dir}", "train.log_every=1", "checkpoint.every_steps=0"], tmp_path)
        job.wait_for_step(TINY_STEPS.epoch_end(1) + 1)
        stop_process(job.procs[0].pid)
        good = checkpoint_steps(run_dir)[-1]
        fill_disk(disk, leave_bytes=0)
        job.signal(signal.SIGCONT)
        assert job.wait() == [1], job.output()[-3000:]
        line = one_clear_line(job.output())
        assert "No space left on device (run.dir)" in line
        assert checkpoint_steps(run_dir) == [good] == [TINY_STEPS.epoch_end(1)]
        finite_checkpoint(checkpoint(run_dir, good))
        assert leftovers(run_dir) == []
        records = metrics(run_dir)
        done = max(r["step"] for r in records)
    report("disk full in metrics/pictures", f"run.dir on a 32 MiB tmpfs, filled completely after checkpoint step {good} "
           "(checkpoints at epoch ends only)", f"{shown(line, run_dir)} exit 1; checkpoint {good} intact, no partial "
           "picture left", f"{done - good} steps ({good + 1}-{done})",
           f"none written is lost: {len(records)} complete records; later ones were never written")


# 4. A rank that stops answering -------------------------------------------------------------------


@pytest.mark.parametrize("silent", [1, 0], ids=["rank1-stopped", "rank0-stopped"])
def test_a_rank_that_stops_answering_is_named_within_the_timeout(tmp_path: Path, silent: int) -> None:
    """SIGSTOP one of two ranks (srun-like, so rank 0 hosts the store): the other gives up after
    dist.timeout_s=8 plus a heartbeat check, with one line naming the silent rank."""
    timeout_s = 8
    run_dir = tmp_path / "run"
    job = Job.start([*TINY, f"run.dir={run_dir}", *EVERY_STEP, "train.epochs=30", f"dist.timeout_s={timeout_s}"],
                    tmp_path, nproc=2, srun_like=True)
    job.wait_for_step(12)
    stop_process(job.procs[silent].pid)
    started = time.monotonic()
    done, good = max(logged_steps(run_dir)), checkpoint_steps(run_dir)[-1]
    other = 1 - silent
    code = job.procs[other].wait(RUN_TIMEOUT)
    waited = time.monotonic() - started
    job.kill()
    line = one_clear_line(job.output(other))
    assert code == 1
    assert f"rank {silent}" in line and "stopped answering" in line and f"dist.timeout_s={timeout_s}" in line, line
    assert timeout_s * 0.8 <= waited <= timeout_s + 30, waited  # gloo's timeout, 3 heartbeats, a busy machine
    report(f"rank {silent} stops answering", f"SIGSTOP to rank {silent} of 2 (dist.timeout_s={timeout_s})",
           f"rank {other} gave up after {waited:.0f} s: {shown(line, run_dir, 150)}, exit 1",
           f"{done - good} steps ({good + 1}-{done}): a rerun resumes from checkpoint {good}",
           "none: the checkpoints are complete")


# 5. NaN / Inf loss ------------------------------------------------------------------------------------


def test_huge_learning_rate_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = Job.start([*TINY, f"run.dir={run_dir}", "optim.lr=1e6", "checkpoint.every_steps=1", "wandb.mode=disabled"],
                    tmp_path)
    assert job.wait() == [1], job.output()[-3000:]
    line = one_clear_line(job.output())
    bad = int(re.search(r"loss is NaN or Inf at step (\d+) \(train.nan_policy=stop\)", line)[1])
    assert checkpoint_steps(run_dir)[-1] == bad - 1  # written every step, none at or after the bad one
    finite_checkpoint(checkpoint(run_dir, bad - 1))
    report("NaN loss (huge lr)", "optim.lr=1e6, checkpoint every step", f"{shown(line, run_dir, 70)} exit 1; newest checkpoint "
           f"is step {bad - 1}, every tensor finite", "0 steps (the run cannot go on)", "none")


POISONED = 15  # the step whose batch holds a NaN pixel (epoch 1, after checkpoint 10)


def poisoned_run(tmp_path: Path, policy: str, step: int) -> tuple[Job, Path]:
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}", f"train.nan_policy={policy}", "wandb.mode=disabled"]
    job = Job.start(args, tmp_path, env=hook_env(tmp_path, "poison_batch", POISON_STEP=str(step)))
    job.wait()
    return job, run_dir


def test_poisoned_batch_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    job, run_dir = poisoned_run(tmp_path, "stop", POISONED)
    assert job.exit_codes == [1], job.output()[-3000:]
    line = one_clear_line(job.output())
    assert f"loss is NaN or Inf at step {POISONED} (train.nan_policy=stop)" in line
    good = [step for step in TINY_STEPS.checkpoints() if step < POISONED]  # [10]
    assert checkpoint_steps(run_dir) == good
    finite_checkpoint(checkpoint(run_dir, good[-1]))
    assert max(logged_steps(run_dir)) < POISONED  # nothing logged past the bad step
    report("NaN loss (poisoned batch)", f"a NaN pixel in the batch of step {POISONED}", f"{shown(line, run_dir, 70)} exit 1; "
           f"newest checkpoint is step {good[-1]}, every tensor finite",
           f"{POISONED - good[-1]} steps ({good[-1] + 1}-{POISONED}) if rerun with the batch fixed", "none")


def test_poisoned_batch_with_nan_policy_skip_drops_the_step_and_counts_it(tmp_path: Path) -> None:
    job, run_dir = poisoned_run(tmp_path, "skip", POISONED)
    assert job.exit_codes == [0], job.output()[-3000:]
    epochs = [r for r in metrics(run_dir) if r["kind"] == "epoch"]
    assert [r["skipped_steps"] for r in epochs] == [1] * TINY_STEPS.epochs
    weights = load_weights(run_dir / "model.pt")
    assert all(t.isfinite().all() for t in weights.values())
    assert finite_checkpoint(checkpoint(run_dir, TINY_STEPS.total))["skipped_steps"] == 1
    report("NaN loss, nan_policy=skip", f"a NaN pixel in the batch of step {POISONED}, train.nan_policy=skip",
           f"step {POISONED} skipped (no update), `skipped_steps: 1` in metrics.jsonl and the checkpoints; run completed, "
           "weights finite", "1 step (the poisoned one)", "none")


# 6. MASTER_PORT already taken ------------------------------------------------------------------------


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port held by another program: it accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def ranks_env(tmp: Path, rank: int, port: int) -> dict[str, str]:
    return clean_env(tmp, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def timed(command: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return result, time.monotonic() - started


def test_master_port_taken_rank_0_says_so_at_once(tmp_path: Path) -> None:
    with taken_port() as port:
        result, took = timed(train_cmd([*TINY, f"run.dir={tmp_path / 'run'}"]), ranks_env(tmp_path, 0, port))
    line = one_clear_line(result.stderr)
    assert result.returncode == 2 and f"MASTER_PORT {port} is already in use" in line and "(MASTER_PORT)" in line
    report("MASTER_PORT taken (rank 0)", "rank 0 of 2 started with MASTER_PORT held by another program",
           f"{shown(line, tmp_path / 'run')} exit 2 after {took:.0f} s", "none (nothing started)", "none")


def test_master_port_taken_other_ranks_give_up_within_the_timeout(tmp_path: Path) -> None:
    """Rank 1 reaches a program that accepts and never answers (TCPStore's own client would wait forever)."""
    with taken_port() as port:
        result, took = timed(train_cmd([*TINY, f"run.dir={tmp_path / 'run'}", "dist.timeout_s=3"]),
                             ranks_env(tmp_path, 1, port))
    line = one_clear_line(result.stderr)
    assert result.returncode == 2 and f"127.0.0.1:{port}" in line and "(MASTER_ADDR:MASTER_PORT)" in line, line
    assert took < 3 + 10 + 30  # the timeout, the connect margin, a busy machine
    report("MASTER_PORT taken (other ranks)", "rank 1 of 2 pointed at a port another program holds, dist.timeout_s=3",
           f"{shown(line, tmp_path / 'run')} exit 2 after {took:.0f} s", "none (nothing started)", "none")


def test_master_port_taken_under_torchrun_fails_fast(tmp_path: Path) -> None:
    """torchrun's own store cannot bind: torchrun (not our code) exits 1 within seconds, naming EADDRINUSE."""
    with taken_port() as port:
        command = [PYTHON, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", f"--master_port={port}",
                   "-m", "ae_dist.train", *TINY, f"run.dir={tmp_path / 'run'}"]
        result, took = timed(command, clean_env(tmp_path))
    assert result.returncode == 1 and "EADDRINUSE" in result.stderr and str(port) in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # no worker started
    report("MASTER_PORT taken (torchrun)", f"`torchrun --nnodes=1 --master_port={port}` with the port held",
           f"torchrun exits 1 after {took:.0f} s, its last line: `DistNetworkError: ... EADDRINUSE`; "
           "`--standalone` picks a free port", "none (nothing started)", "none")


# 7. Damaged data files -----------------------------------------------------------------------------


def truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])


def wrong_magic(path: Path) -> None:
    path.write_bytes(b"\x12\x34\x56\x78" + path.read_bytes()[4:])


def foreign_gz(path: Path) -> None:
    """A .gz beside the file whose md5 is not torchvision's (a different download)."""
    (path.parent / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))


DAMAGE = {
    "truncated-images": ("train-images-idx3-ubyte", truncate, True),
    "truncated-labels": ("t10k-labels-idx1-ubyte", truncate, False),
    "wrong-magic-images": ("t10k-images-idx3-ubyte", wrong_magic, False),
    "wrong-magic-labels": ("train-labels-idx1-ubyte", wrong_magic, True),
    "wrong-md5": ("train-images-idx3-ubyte", foreign_gz, True),
}


@pytest.mark.fast
@pytest.mark.compat
def test_intact_small_idx_files_load(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, train=64, test=32)
    split = data.load_split(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), "train")
    assert split.images.shape == (64, 1, 28, 28) and split.labels.tolist()[:11] == [*range(10), 0]


@pytest.mark.fast
@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_data_file_is_named_in_one_line(tmp_path: Path, case: str) -> None:
    name, damage, train = DAMAGE[case]
    raw = write_fashion_mnist(tmp_path, train=64, test=32)
    damage(raw / name)
    with pytest.raises(UsageError) as caught:
        data.load_split(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False), "train" if train else "test")
    (line,) = caught.value.lines()
    culprit = raw / (name + ".gz" if damage is foreign_gz else name)
    assert f"({culprit})" in line, line


def test_damaged_data_file_stops_the_command_before_training(tmp_path: Path) -> None:
    raw = write_fashion_mnist(tmp_path / "data", train=64, test=32)
    truncate(raw / "train-images-idx3-ubyte")
    run_dir = tmp_path / "run"
    result = subprocess.run(train_cmd([*TINY, "data.name=fashion_mnist", f"data.root={tmp_path / 'data'}",
                                       "data.download=false", f"run.dir={run_dir}"]),
                            cwd=REPO, env=clean_env(tmp_path), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    line = one_clear_line(result.stderr)
    assert result.returncode == 2 and f"({raw / 'train-images-idx3-ubyte'})" in line, result.stderr
    assert checkpoint_steps(run_dir) == [] and metrics(run_dir) == []  # nothing trained on garbage
    report("damaged data file", "FashionMNIST IDX files truncated, with a wrong magic number, or a .gz whose md5 "
           "is not torchvision's", f"{shown(line.replace(str(raw), '<raw>'), run_dir, 150)} exit 2, before any step",
           "none", "none")

