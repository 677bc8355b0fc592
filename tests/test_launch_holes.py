"""Smaller launcher holes, each once seen: a torn line in the job registry, sweep points that collide,
and the printed next command pasted into a shell (issue 11, item 7). The Ctrl-C on `logs --remote`
case needs sshd: tests/test_launch_remote_races.py.

    /work/main/.venv/bin/python -m pytest tests/test_launch_holes.py -q
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch import cli, jobs, request, shell
from launch.jobs import REGISTRY, Record, Run
from tests.helpers.commands import REPO

DIGITS = ["--config", str(REPO / "configs" / "digits.yaml")]


def record(job_id: str, run_dir: Path) -> Record:
    log = run_dir / "submitit" / f"{job_id}_0_log.out"
    log.parent.mkdir(parents=True)
    log.write_text(f"log of {job_id}\n")
    (run_dir / "model.pt").write_bytes(b"weights")
    return Record(job_id, "debug", "2025-01-01T00:00:00", "here", "debug: 1 node(s) x 1 task(s)", 1, "ae-dist", "", "offline",
                  [Run(job_id, str(run_dir), f"id{job_id}", [str(log)])])


@pytest.mark.fast
def test_a_torn_registry_line_is_skipped_with_one_warning(tmp_path: Path, monkeypatch, capsys) -> None:
    """A launcher killed mid-write leaves half a line: status, logs, cancel and fetch still work for the intact jobs,
    each with one warning line; the next submission starts a fresh line instead of gluing onto the torn one."""
    monkeypatch.chdir(tmp_path)
    jobs.remember(record("11", tmp_path / "a"))
    with open(REGISTRY, "a") as fh:
        fh.write('{"job_id": "12", "executor": "slu')  # torn: no end, no newline
    jobs.remember(record("13", tmp_path / "b"))
    for argv, says in ((["status", "11"], "job 11 (debug"), (["status"], "job 13 (debug"),
                       (["logs", "11", "--no-follow"], "log of 11"), (["cancel", "13"], "job 13 had already ended"),
                       (["fetch", "11", "--to", "out"], "fetched out/a")):
        assert cli.main(argv) == 0
        out, err = capsys.readouterr()
        assert says in out, (argv, out)
        assert err.splitlines() == [f"warning: skipped 1 damaged line(s) of {REGISTRY} (line 2); the other jobs are intact"]
    assert (tmp_path / "out" / "a" / "model.pt").read_bytes() == b"weights"
    assert [r.job_id for r in jobs.read_registry()] == ["11", "13"]
    capsys.readouterr()


@pytest.mark.fast
@pytest.mark.parametrize(("sweep", "points"), [
    ("model.hidden=[128,64],(128,64)", "model.hidden=[128,64]' and 'model.hidden=(128,64)' give the same config"),
    ("wandb.name=exp/a,exp:a", "wandb.name=exp/a and wandb.name=exp:a share the folder wandb.name=exp_a"),
    ("optim.lr=1e-3,0.001", "optim.lr=1e-3 and optim.lr=0.001 give the same config"),
])
def test_colliding_sweep_points_are_refused_naming_both(sweep: str, points: str, tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--executor", "local", "--sweep", sweep, *DIGITS, "run.dir=sweep"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and points in err[0] and "(--sweep)" in err[0], err
    assert not (tmp_path / "sweep").exists() and not (tmp_path / REGISTRY).exists()


def test_the_printed_next_command_pastes_into_a_shell_as_printed(tmp_path: Path) -> None:
    """`--remote-dir 'my runs/$(touch PWNED)'` and a two-line setup: the next line, pasted into bash, reaches python
    with the same arguments, and nothing else runs."""
    argv = ["--remote", "login", "--remote-dir", f"my runs/$(touch {tmp_path}/PWNED)`touch {tmp_path}/PWNED`",
            "--remote-setup", "source 'a b'/bin/activate\nexport X=\"$HOME\"", "--ssh-config", "my ssh/config"]
    req = cli.request_of(cli.submit_parser().parse_intermixed_args(argv))
    out = io.StringIO()
    then = shell.command_line(["python", "-m", "launch", *request.ssh_args(req, None)])
    jobs.describe(Record("123", "slurm", "", "", "", 1, "p", "", "offline", []), out, then=then)
    (line,) = [line for line in out.getvalue().splitlines() if line.startswith("  next")]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    (fake / "python").chmod(0o755)
    ran = subprocess.run(["bash", "-c", line.removeprefix("  next")], env={"PATH": f"{fake}:/usr/bin:/bin"},
                         capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == ["-m", "launch", "--remote", "login", "--remote-dir", argv[3], "--remote-setup",
                                      argv[5], "--ssh-config", "my ssh/config", "status", "123"]
    assert not (tmp_path / "PWNED").exists()
