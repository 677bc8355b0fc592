"""The launcher without SLURM: request checks, profiles, sweeps, the job's torchrun variables,
and real jobs through submitit's `local` and `debug` executors (2 processes, requeue on the
preemption signal, resume bitwise identical).

    /work/main/.venv/bin/python -m pytest tests/test_launch.py -q
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from ae_dist.config import load_config
from launch import cli, job, plan, profiles, request
from launch.jobs import REGISTRY
from tests.helpers.commands import REPO, TINY, assert_bitwise_equal, load_weights, wait_for
from tests.helpers.launcher import run_launch, start_launch, wait_for_record
from tests.helpers.run_files import has_logged_a_step, run_id
from tests.helpers.schedule import schedule
from tests.helpers.wandb_offline import merge_runs, read_runs

THREADS = ("train.threads=1",)  # the same intra-op threads in the reference and in the job: bitwise comparable


def usage_error(argv: list[str], capsys) -> str:
    """Run the launcher in this process; it must end with exit 2 and exactly one `error:` line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# -------------------------------------------------------------------------------------------
# Requests, profiles, sweeps, the job environment
# -------------------------------------------------------------------------------------------

@pytest.mark.fast
@pytest.mark.parametrize(("text", "minutes"), [("90", 90), ("1:30", 2), ("02:00:00", 120), ("1-00", 1440),
                                               ("1-2:30", 1590), ("0-0:0:61", 2)])
def test_time_formats(text: str, minutes: int) -> None:
    assert request.parse_time(text) == minutes


@pytest.mark.fast
@pytest.mark.parametrize("argv", [
    ["--nodes", "0"], ["--tasks-per-node", "-1"], ["--time", "soon"], ["--time", "0"],
    ["--executor", "local", "--nodes", "2"], ["--executor", "debug", "--tasks-per-node", "2"],
    ["--executor", "local", "--gpus-per-node", "2", "--tasks-per-node", "1"],
    ["--executor", "local", "--tasks-per-node", "3"],  # the global batch of 64 does not divide by 3
    ["--executor", "local", "--sweep", "optim.lrr=1e-3,2e-3"], ["--executor", "local", "--sweep", "optim.lr"],
    ["--executor", "local", "--sweep", "optim.lr=1e-3,1e-3"], ["--executor", "cluster"], ["--cluster", "nowhere"],
    ["--nodes", "two"],
])
def test_impossible_requests_are_one_line_errors(argv: list[str], tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    usage_error([*argv, "--config", str(REPO / "configs" / "digits.yaml"), f"run.dir={tmp_path / 'run'}"], capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / REGISTRY).exists()  # nothing submitted


def test_no_sbatch_and_no_remote_host(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # python, but no SLURM client
    line = usage_error(["--config", str(REPO / "configs" / "digits.yaml")], capsys)
    assert "no sbatch on this machine and no remote host" in line and "--remote" in line


@pytest.mark.fast
def test_unreachable_ssh_host_fails_in_seconds(tmp_path: Path, capsys) -> None:
    with socket.socket() as sock:  # a port nothing listens on: bound here, never listened on
        sock.bind(("127.0.0.1", 0))
        config = tmp_path / "ssh_config"
        config.write_text(f"Host nowhere\n  HostName 127.0.0.1\n  Port {sock.getsockname()[1]}\n")
        for command in ([], ["status"], ["fetch", "--to", str(tmp_path / "f")]):
            started = time.monotonic()
            line = usage_error([*command, "--remote", "nowhere", "--ssh-config", str(config),
                                *([] if command else ["--config", str(REPO / "configs" / "digits.yaml")])], capsys)
            assert "cannot reach nowhere over SSH" in line and time.monotonic() - started < 30


@pytest.mark.fast
def test_every_cluster_profile_loads() -> None:
    names = profiles.available()
    assert "local" in names and "example" in names
    for name in names:
        values = profiles.load_profile(name)
        assert set(values) <= set(profiles.KEYS)


@pytest.mark.fast
def test_profile_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("partiton: gpu\nnodes: two\nsetup: [1, 2]\n")
    with pytest.raises(cli.UsageError) as err:
        profiles.load_profile(str(path))
    lines = err.value.lines()
    assert len(lines) == 3
    assert "partiton" in lines[0] and "did you mean partition?" in lines[0]
    assert "nodes" in lines[1] and "int" in lines[1]
    assert "setup" in lines[2]


@pytest.mark.fast
def test_flags_win_over_the_profile_which_wins_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("partition: gpu\nnodes: 4\ngpus_per_node: 8\ntime: '2:00:00'\nsetup: |\n  module load cuda\n"
                    "host: login.example.org\nremote_setup: [source venv/bin/activate]\n")
    args = cli.submit_parser().parse_intermixed_args(["--cluster", str(path), "--nodes", "2"])
    req = cli.request_of(args)
    assert (req.nodes, req.partition, req.gpus_per_node, req.ranks_per_node) == (2, "gpu", 8, 8)
    assert req.time_min == 120 and req.setup == ("module load cuda",) and req.signal_delay_s == 120
    remote = cli.remote_of(req)
    assert remote.host == "login.example.org" and remote.setup == ("source venv/bin/activate",)
    forwarded = cli.forwarded_args(req, args)  # what the login node's launcher gets
    assert "--nodes=2" in forwarded and not any(arg.startswith(("--cluster", "--remote")) for arg in forwarded)


@pytest.mark.fast
def test_sweep_is_a_product_with_one_folder_per_point_and_one_group(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "digits.yaml", [f"run.dir={tmp_path / 'sweep'}"])
    sweeps = plan.parse_sweeps(["optim.lr=1e-3,3e-3", "model.hidden=[128,64,12],[64,32,8]"])
    runs = plan.plan_runs(config, sweeps, world_size=2)
    assert [(r.optim.lr, r.model.hidden) for r in runs] == [
        (1e-3, (128, 64, 12)), (1e-3, (64, 32, 8)), (3e-3, (128, 64, 12)), (3e-3, (64, 32, 8))]
    assert len({r.run.dir for r in runs}) == 4
    assert all(Path(r.run.dir).parent == tmp_path / "sweep" for r in runs)
    assert {r.wandb.group for r in runs} == {"sweep-sweep"}


@pytest.mark.fast
def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(REPO / "configs" / "digits.yaml", ["run.dir=runs/x", "data.root=data"])
    (planned,) = plan.plan_runs(config, [], world_size=1)
    assert planned.run.dir == str(tmp_path / "runs" / "x") and planned.data.root == str(tmp_path / "data")


class FakeJob:
    cluster = "slurm"
    global_rank, local_rank, num_tasks, num_nodes = 5, 1, 8, 4
    hostnames = ["gpu[3]", "gpu4"]
    raw_job_id = "123456"


def test_torchrun_variables_from_the_job() -> None:
    env = job.torchrun_env(FakeJob())
    assert env == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "gpu[3]", "MASTER_PORT": "19456"}
    assert job.master_port("DEBUG_17") == job.master_port("DEBUG_17") != job.master_port("DEBUG_18")
    FakeJob.cluster = "local"
    assert job.torchrun_env(FakeJob())["MASTER_ADDR"] == "127.0.0.1"
    FakeJob.cluster = "slurm"


# -------------------------------------------------------------------------------------------
# Real jobs, no SLURM: submitit's local and debug executors
# -------------------------------------------------------------------------------------------

def test_local_executor_two_processes_requeue_and_resume_exactly(tmp_path: Path, reference_runs) -> None:
    """Two ranks under submitit's local executor: SIGUSR2 to both mid-training (as SLURM sends it) ->
    checkpoint, requeue, resume; the final weights are those of an uninterrupted 2-process torchrun run."""
    reference = reference_runs(THREADS, nproc=2)  # the signal goes straight to the tasks: 3 epochs leave room
    run_dir = tmp_path / "run"
    launcher = start_launch(["--executor", "local", "--tasks-per-node", "2", "--wait", *TINY, *THREADS, "run.dir=run"],
                            tmp_path)
    record = wait_for_record(tmp_path, launcher)
    wait_for(lambda: has_logged_a_step(run_dir), 120, "the first logged step")
    tasks = psutil.Process(int(record.job_id)).children()  # the controller's children: rank 0 and rank 1
    assert len(tasks) == 2
    for task in tasks:
        task.send_signal(signal.SIGUSR2)
    assert launcher.wait(300) == [0], launcher.output()
    out = launcher.stdout()
    assert record.executor == "local" and record.runs[0].run_dir == str(run_dir)
    assert f"submitted job {record.job_id}" in out and record.runs[0].wandb_run_id in out
    log = Path(record.runs[0].logs[0]).read_text()
    assert "stopped by signal 12" in log and "requeueing job" in log and "resumed from" in log
    assert_bitwise_equal(load_weights(reference / "model.pt"), load_weights(run_dir / "model.pt"))
    pieces = read_runs(run_dir / "wandb")
    assert len(pieces) == 2 and len(merge_runs(pieces)) == 1  # two starts, one W&B run
    assert pieces[0].run_id == run_id(run_dir)

    status = run_launch(["status"], tmp_path)
    s = schedule([*TINY, *THREADS])
    assert status.returncode == 0 and "COMPLETED" in status.stdout
    assert f"epoch {s.epochs}/{s.epochs}, step {s.total}" in status.stdout
    logs = run_launch(["logs", record.job_id, "--task", "1"], tmp_path)
    assert logs.stdout.count("ae-dist task 1/2") == 2  # rank 1's log, both starts
    fetched = run_launch(["fetch", "--to", "fetched"], tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    got = tmp_path / "fetched" / "run"
    assert {"metrics.jsonl", "recon.png", "model.pt", "config.yaml"} <= {p.name for p in got.iterdir()}
    assert not (got / "checkpoints").exists() and len(list((got / "logs").iterdir())) == 2


def test_debug_executor_trains_in_process(tmp_path: Path) -> None:
    result = run_launch(["--executor", "debug", *TINY, "train.epochs=1", "wandb.mode=disabled", "run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done:" in result.stdout and (tmp_path / "run" / "model.pt").exists()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["run"]["dir"] == str(tmp_path / "run") and saved["train"]["epochs"] == 1


def test_console_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_launch(["--executor", "local", "--nodes", "0"], tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --nodes is 0 (--nodes): use an integer >= 1")
