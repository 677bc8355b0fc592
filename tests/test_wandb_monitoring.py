"""W&B as its users expect it, read back from the offline run files: W&B never stops training,
system metrics, per-rank step times and stragglers, artifacts, run metadata.

    /work/main/.venv/bin/python -m pytest tests/test_wandb_monitoring.py -q

No W&B server is reachable here: "online" is tried against a closed port on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.commands import REPO, TINY, clean_env, hook_env, train_cmd
from tests.helpers.wandb_offline import read_records, read_runs

FAKE_KEY = "fakekey0123456789abcdef0123456789abcdef01"  # 40 characters, as a real W&B API key
SHORT = [*TINY, "train.epochs=2"]  # 46 steps, a train record every 5, a checkpoint every 10
FALLBACK_BOUND_S = 30


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, list[tuple[float, str]]]:
    """Run ``cmd``; its exit status and each output line (stdout and stderr together) with when it came."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line.rstrip("\n")) for line in proc.stdout))
    reader.start()
    try:
        status = proc.wait(timeout)
    finally:
        proc.kill()
        reader.join()
    return status, lines


def text(lines: list[tuple[float, str]]) -> str:
    return "\n".join(line for _, line in lines)


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()]


# W&B never stops training


def test_unreachable_server_falls_back_offline_and_trains(tmp_path):
    env = clean_env(tmp_path, WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    del env["WANDB_MODE"]  # credentials and no mode: online is tried
    run_dir = tmp_path / "run"
    status, lines = timed_run(train_cmd([*TINY, "train.epochs=1", f"run.dir={run_dir}"]), env)
    assert status == 0, text(lines)[-3000:]
    said = [(at, line) for at, line in lines if line.startswith("W&B: cannot reach")]
    assert len(said) == 1 and "continuing offline" in said[0][1], text(lines)
    started = next(at for at, line in lines if line.startswith("global batch"))  # just before W&B starts
    assert said[0][0] - started < FALLBACK_BOUND_S
    assert any("upload it with: wandb sync " in line for _, line in lines)
    assert (run_dir / "model.pt").exists()
    (offline,) = read_runs(run_dir / "wandb" / next(p.name for p in (run_dir / "wandb").glob("offline-run-*")))
    assert offline.steps and offline.run_id == json.loads((run_dir / "run.json").read_text())["wandb_run_id"]
    assert files_holding(tmp_path, FAKE_KEY) == [] and FAKE_KEY not in text(lines)


def test_online_without_credentials_is_one_line_and_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    started = time.monotonic()
    status, lines = timed_run(train_cmd([*TINY, f"run.dir={run_dir}", "wandb.mode=online"]), clean_env(tmp_path))
    assert status == 2 and time.monotonic() - started < FALLBACK_BOUND_S
    (line,) = [line for _, line in lines]
    assert line.startswith("error: W&B is set online but no W&B credentials are configured (wandb.mode): ")
    assert "wandb login" in line and "WANDB_API_KEY" in line and "wandb.mode=offline" in line
    assert not run_dir.exists()  # before any work


def test_a_wandb_failure_mid_run_turns_wandb_off_and_training_goes_on(tmp_path):
    env = hook_env(tmp_path, "wandb_fails")  # Run.log raises from its 3rd call on
    run_dir = tmp_path / "run"
    status, lines = timed_run(train_cmd([*TINY, "train.epochs=1", f"run.dir={run_dir}"]), env)
    assert status == 0, text(lines)[-3000:]
    failed = [line for _, line in lines if line.startswith("W&B: log failed")]
    assert len(failed) == 1 and "CommError: injected" in failed[0] and "W&B is off" in failed[0], text(lines)
    assert "Traceback" not in text(lines)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(5, 24, 5))
    assert (run_dir / "model.pt").exists()


# What a 2-process run holds: one run shared by the tests below, rank 1 made slow (tests/helpers/hooks/straggler.py)


SLURM_FACTS = {"SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "3"}


@pytest.fixture(scope="module")
def straggling_run(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("straggling")
    env = hook_env(tmp, "straggler", AE_DIST_TEST_SLOW_S="0.06", **SLURM_FACTS)
    run_dir = tmp / "run"
    args = [*SHORT, f"run.dir={run_dir}", "wandb.tags=digits,straggler", "wandb.notes=rank 1 sleeps before each step",
            "wandb.job_type=test"]
    status, lines = timed_run(train_cmd(args, nproc=2), env)
    assert status == 0, text(lines)[-3000:]
    return run_dir, text(lines)


def wandb_file(run_dir: Path) -> Path:
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return path


def test_two_process_run_holds_metadata_system_metrics_and_rank_times(straggling_run):
    run_dir, _ = straggling_run
    records = read_records(wandb_file(run_dir))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "stats" in kinds  # W&B's own system monitor (wandb.system_metrics defaults to true)
    stats = next(r.stats for r in records if r.WhichOneof("record_type") == "stats")
    assert any(item.key.startswith(("cpu", "memory", "proc.")) for item in stats.item)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (list(run.tags), run.notes, run.job_type) == (["digits", "straggler"], "rank 1 sleeps before each step", "test")

    (offline,) = read_runs(run_dir / "wandb")
    job = offline.config["job"]
    assert job["world_size"] == 2 and job["nodes"] == [socket.gethostname()]
    assert (job["slurm_job_id"], job["slurm_array_task_id"]) == ("4240", "3")
    assert job["torchrun_run_id"] and len(job["git_sha"]) == 40 and job["git_dirty"] in (True, False)
    assert FAKE_KEY not in json.dumps(offline.config)

    timed = [row for row in offline.history if "ranks/step_time_max" in row]
    assert len(timed) >= 6  # every train.log_every=5 steps but the first of each epoch's windows
    for row in timed:
        assert row["ranks/step_time_max"] >= row["ranks/step_time_median"] > 0
        assert row["ranks/slowest_host"] == socket.gethostname()
        assert row["_step"] % 5 == 0
    epochs = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert offline.summary["best_test_loss"] == min(r["test_loss"] for r in epochs)
    assert offline.summary["final_test_loss"] == epochs[-1]["test_loss"]
    assert offline.summary["baseline_test_loss"] == epochs[-1]["baseline_test_loss"] > 0  # PCA-3 on the same split
    assert offline.summary["final_test_loss_ratio"] == epochs[-1]["test_loss"] / epochs[-1]["baseline_test_loss"]
    metric = next(r.metric for r in records if r.WhichOneof("record_type") == "metric")
    assert (metric.glob_name, metric.step_metric) == ("epoch/*", "epoch/epoch")


def test_final_model_and_checkpoints_are_artifacts(straggling_run):
    run_dir, _ = straggling_run
    artifacts = [r.artifact for r in read_records(wandb_file(run_dir)) if r.WhichOneof("record_type") == "artifact"]
    (model,) = [a for a in artifacts if a.type == "model"]
    assert set(model.aliases) == {"latest", "final"}
    (entry,) = model.manifest.contents
    assert entry.path == "model.pt" and not entry.ref
    assert entry.digest == base64.b64encode(hashlib.md5((run_dir / "model.pt").read_bytes()).digest()).decode()
    metadata = json.loads(model.metadata)
    assert (metadata["step"], metadata["epoch"]) == (46, 2)
    assert metadata["config_sha256"] == hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()
    epochs = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert metadata["test_loss"] == epochs[-1]["test_loss"]

    (checkpoint,) = [a for a in artifacts if a.type == "checkpoint"]  # the newest, when the run stops
    assert json.loads(checkpoint.metadata)["step"] == 46 and set(checkpoint.aliases) == {"latest", "step-46"}
    (entry,) = checkpoint.manifest.contents  # wandb.log_checkpoints=reference: the file's URI, nothing uploaded
    assert entry.ref == (run_dir / "checkpoints" / "step_00000046.pt").resolve().as_uri() and not entry.local_path


def test_a_slow_rank_is_named_once_and_in_the_history(straggling_run):
    run_dir, output = straggling_run
    named = [line for line in output.splitlines() if line.startswith("straggler:")]
    assert len(named) == 1, output
    assert named[0].startswith(f"straggler: rank 1 on {socket.gethostname()} takes ")
    records = read_records(wandb_file(run_dir))
    (alert,) = [r.alert for r in records if r.WhichOneof("record_type") == "alert"]
    assert alert.title == "straggler" and alert.text == named[0]
    (offline,) = read_runs(run_dir / "wandb")
    timed = [row for row in offline.history if "ranks/slowest_rank" in row]
    slow = [row for row in timed if row["ranks/slowest_ratio"] > 1.5]
    assert len(slow) >= 3 and all(row["ranks/slowest_rank"] == 1 for row in slow)
    assert all(row["ranks/data_time_max"] >= 0.06 for row in slow)  # rank 1's sleep comes before its forward
