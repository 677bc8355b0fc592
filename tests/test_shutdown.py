"""The end of a finished run: stop signals through the whole exit, W&B's finish after the other ranks
are released, and a W&B offline file that cannot be read. Real processes, W&B offline."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.helpers.commands import TINY, hook_env, wait_for
from tests.helpers.processes import Job


def test_stop_signals_from_the_last_epoch_line_to_the_exit_leave_exit_0_with_wandb_offline(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = Job.start([*TINY, f"run.dir={run_dir}", "train.epochs=1", "wandb.mode=offline"], tmp_path)
    wait_for(lambda: "epoch 1/1," in job.output() or job.check_running(), 240, "the last epoch line")
    deadline = time.monotonic() + 1.0
    while job.procs[0].poll() is None:  # one second after the line, then every 50 ms until the process is gone:
        if time.monotonic() >= deadline:  # the wrap-up, W&B's finish, the interpreter's shutdown
            job.signal(signal.SIGUSR1)
        time.sleep(0.05)
    assert job.wait() == [0], job.output()[-3000:]
    assert (run_dir / "model.pt").exists() and "Traceback" not in job.output(), job.output()[-3000:]


def test_a_wandb_finish_longer_than_the_timeout_leaves_every_rank_exit_0(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}", "train.epochs=1", "wandb.mode=offline", "dist.timeout_s=8"]
    # longer than the process group's own timeout too (dist.timeout_s + 10 s: ae_dist.dist.liveness.group_timeout)
    job = Job.start(args, tmp_path, nproc=2, srun_like=True, env=hook_env(tmp_path, "slow_wandb_finish", SLOW_FINISH_S="25"))
    assert job.wait() == [0, 0], job.output(0)[-2000:] + job.output(1)[-2000:]
    assert "slow W&B finish: 25 s" in job.output(0) and (run_dir / "model.pt").exists()
    assert "error:" not in job.output(0) + job.output(1)


def test_an_offline_wandb_file_that_does_not_decode_costs_one_line_not_the_start(tmp_path: Path) -> None:
    import json
    import zlib

    from ae_dist.monitor.wandb_run import CHUNK, WANDB_LOG_HEADER
    from tests.helpers.commands import run_train

    run_dir = tmp_path / "run"
    args = [*TINY, f"run.dir={run_dir}", "wandb.mode=offline"]
    run_train([*args, "train.epochs=1"], tmp_path)
    run_id = json.loads((run_dir / "run.json").read_text())["wandb_run_id"]
    payload = b"\xff\xff\xff\xff"  # framed right (the checksum holds), but no protobuf Record
    broken = WANDB_LOG_HEADER + CHUNK.pack(zlib.crc32(bytes([1]) + payload), len(payload), 1) + payload
    for path in (run_dir / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"):
        path.write_bytes(broken)
    result = run_train([*args, "train.epochs=2"], tmp_path, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"W&B: cannot read what the offline run {run_id} holds (DecodeError" in result.stderr, result.stderr[-3000:]
    assert "epoch 2/2," in result.stdout
