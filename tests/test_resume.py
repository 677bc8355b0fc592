"""Checkpoints and exact resume, on real processes killed with SIGKILL.

    .venv/bin/python -m pytest tests/test_resume.py

The final weights of a run killed and rerun must be bitwise those of the uninterrupted
run (same world size, CPU); a damaged or hostile checkpoint is skipped or refused; a
checkpoint made with another model or data config stops the run with exit 2.
"""

from __future__ import annotations

import copy
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from ae_dist.config import load_config, to_dict
from ae_dist.errors import UsageError
from ae_dist.run import checkpoint
from tests.helpers.commands import TINY, assert_bitwise_equal, load_weights, run_train
from tests.helpers.interrupted import interrupted_run
from tests.helpers.run_files import checkpoint as checkpoint_path
from tests.helpers.run_files import metrics, write_metrics
from tests.helpers.schedule import schedule

TINY_STEPS = schedule(TINY)  # 3 epochs of 23 steps; checkpoints every 10 steps and at epoch ends, the newest 3 kept


def name(step: int) -> str:
    return checkpoint_path(Path(), step).name


def copy_run(source: Path, tmp: Path) -> Path:
    """A private copy of a finished run folder (the reference runs are shared)."""
    run_dir = tmp / "run"
    shutil.copytree(source, run_dir, symlinks=True)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace(str(source), str(run_dir)))
    return run_dir


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder with its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def resumed_from(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("resumed from ")]
    assert len(lines) == 1, stdout[-2000:]
    return Path(lines[0].split()[2]).name


# 1. kill -9 at three points, rerun the same command: bitwise the uninterrupted weights


@pytest.mark.compat
@pytest.mark.parametrize("nproc", [1, 2])
def test_killed_three_times_then_rerun_matches_the_uninterrupted_run(nproc, reference_runs, tmp_path_factory):
    run = interrupted_run(tmp_path_factory, nproc)
    after_checkpoint, mid_epoch, in_write, to_the_end = run.legs
    s, kills = run.schedule, run.kills
    for leg in run.legs[:3]:
        assert leg.returncode == -9, (leg.name, leg.returncode, leg.stderr[-2000:])  # the command was killed
    assert to_the_end.returncode == 0, to_the_end.stderr[-3000:]

    # Where each kill landed, and where each rerun started.
    assert after_checkpoint.newest_step() in (kills.after_checkpoint, kills.after_checkpoint + s.every_steps), \
        after_checkpoint.checkpoints
    assert resumed_from(mid_epoch.stdout) == after_checkpoint.checkpoints[-1]
    killed_at = max(r["step"] for r in mid_epoch.metrics)
    epoch_2_end = s.epoch_end(2)
    assert kills.mid_epoch <= killed_at < epoch_2_end and mid_epoch.newest_step() < epoch_2_end, \
        "killed mid-epoch 2, after unsaved steps"
    assert not any(r["kind"] == "epoch" and r["epoch"] == 2 for r in mid_epoch.metrics)
    assert resumed_from(in_write.stdout) == mid_epoch.checkpoints[-1]
    assert in_write.newest_step() == epoch_2_end, in_write.checkpoints  # the write of step 50 never completed
    assert len(in_write.temporaries) == 1 and in_write.temporaries[0].startswith(f".{name(kills.in_write)}.tmp-")
    assert resumed_from(to_the_end.stdout) == name(epoch_2_end)
    assert to_the_end.temporaries == [], "the partial file of the killed writer is removed"
    assert to_the_end.checkpoints == [name(step) for step in s.kept()]  # steps 50, 60, 69

    reference = reference_runs((), nproc)
    assert_bitwise_equal(load_weights(run.run_dir / "model.pt"), load_weights(reference / "model.pt"))
    # The last checkpoint holds the same state as well (optimizer included).
    ours = checkpoint.read(checkpoint_path(run.run_dir, s.total))
    theirs = checkpoint.read(checkpoint_path(reference, s.total))
    for a, b in zip(ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values()):
        assert_bitwise_equal(a, b)


# 2. a 2-process run resumed by 1 process (same global batch)


def test_two_process_run_resumes_with_one_process(reference_runs, tmp_path):
    # The 2-process run as it stood at its oldest kept checkpoint (step 50, mid-epoch 3): later files removed.
    reference = reference_runs((), 2)
    run_dir = copy_run(reference, tmp_path)
    (run_dir / "model.pt").unlink()
    start, *later = TINY_STEPS.kept()
    for late in later:
        checkpoint_path(run_dir, late).unlink()
    write_metrics(run_dir, [r for r in metrics(reference) if r["step"] <= start])

    done = run_train([*TINY, f"run.dir={run_dir}", "wandb.mode=disabled"], tmp_path, nproc=1)
    assert resumed_from(done.stdout) == name(start)
    saved = checkpoint.read(checkpoint_path(run_dir, start))
    assert (saved["epoch"], saved["batch"]) == TINY_STEPS.position(start)  # (2, 4): epoch 3, after 4 batches

    ours, theirs = metrics(run_dir), metrics(reference)
    assert [(r["step"], r["kind"]) for r in ours] == [(r["step"], r["kind"]) for r in theirs]
    assert ours[-1]["kind"] == "epoch" and ours[-1]["step"] == TINY_STEPS.total
    assert checkpoint.read(checkpoint_path(run_dir, TINY_STEPS.total))["step"] == TINY_STEPS.total
    assert abs(ours[-1]["test_loss"] - theirs[-1]["test_loss"]) < 1e-3
    # World-size invariant up to float summation order: close, and not by accident identical.
    weights, uninterrupted = load_weights(run_dir / "model.pt"), load_weights(reference / "model.pt")
    assert all(torch.allclose(weights[k], uninterrupted[k], rtol=1e-4, atol=1e-5) for k in weights)


# 3. damaged and hostile checkpoints, a different config, a finished run, resume=never|PATH


def test_damaged_newest_checkpoints_are_skipped_with_one_line_each(reference_runs, tmp_path):
    run_dir = copy_run(reference_runs((), 1), tmp_path)
    (run_dir / "model.pt").unlink()
    oldest, older, newest = (checkpoint_path(run_dir, step) for step in TINY_STEPS.kept())  # steps 50, 60, 69
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated
    damaged = bytearray(older.read_bytes())
    with zipfile.ZipFile(older) as archive:  # one flipped bit inside the largest weight tensor
        tensor = archive.read(max(archive.infolist(), key=lambda m: m.file_size))
    damaged[damaged.find(tensor) + len(tensor) // 2] ^= 0x40
    older.write_bytes(bytes(damaged))

    done = run_train([*TINY, f"run.dir={run_dir}", "wandb.mode=disabled"], tmp_path)
    lines = warnings(done.stderr)
    assert len(lines) == 2, done.stderr
    assert newest.name in lines[0] and older.name in lines[1]
    assert "bad bytes" in lines[1]
    assert resumed_from(done.stdout) == oldest.name
    assert_bitwise_equal(load_weights(run_dir / "model.pt"), load_weights(reference_runs((), 1) / "model.pt"))


class RunsCode:
    """Unpickling this opens (creates) a file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def hostile_checkpoint(path: Path, marker: Path) -> None:
    """A checkpoint in torch's zip format whose pickle calls builtins.open on load."""
    payload = {"model": {}, "optimizer": {}, "epoch": 0, "batch": 0, "step": 99, "config": {},
               "rng": RunsCode(marker)}
    torch.save(payload, path)


def test_hostile_pickle_is_refused_and_its_code_never_runs(tmp_path):
    # The payload is live: an unsafe load runs it.
    control, control_marker = tmp_path / "control.pt", tmp_path / "control-ran"
    hostile_checkpoint(control, control_marker)
    torch.load(control, weights_only=False)["rng"].close()
    assert control_marker.exists()

    marker = tmp_path / "code-ran"
    hostile = tmp_path / "checkpoints" / "step_00000099.pt"
    hostile.parent.mkdir()
    hostile_checkpoint(hostile, marker)
    plain = tmp_path / "plain.pkl"  # the same, as a bare pickle instead of a zip archive
    plain.write_bytes(pickle.dumps(RunsCode(marker)))
    for path in (hostile, plain):
        with pytest.raises(ValueError, match="Unpickling|not a complete"):
            checkpoint.read(path)
    lines: list[str] = []
    assert checkpoint.load_latest(hostile.parent, warn=lines.append) is None
    assert len(lines) == 1 and "step_00000099.pt" in lines[0] and "\n" not in lines[0]
    assert not marker.exists()

    # The trainer itself, told to resume from it: exit 2, one line, and still no marker.
    named = run_train([*TINY, f"run.dir={tmp_path / 'run'}", f"train.resume={hostile}", "wandb.mode=disabled"],
                      tmp_path, check=False)
    assert named.returncode == 2, named.stderr
    assert named.stderr.count("\n") == 1 and named.stderr.startswith("error: checkpoint cannot be loaded"), named.stderr
    assert not marker.exists()


def test_other_model_config_stops_with_exit_2(reference_runs, tmp_path):
    run_dir = copy_run(reference_runs((), 1), tmp_path)
    (run_dir / "model.pt").unlink()  # an unfinished run: the config check, not "complete", must stop it
    before = snapshot(run_dir)
    result = run_train([*TINY, f"run.dir={run_dir}", "model.latent_dim=4"], tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: checkpoint was made with model.latent_dim=3, this command has 4 (")
    assert name(TINY_STEPS.total) in lines[0]
    assert snapshot(run_dir) == before, "nothing in the run folder changed (config.yaml included)"


@pytest.mark.fast
@pytest.mark.parametrize(("key", "value", "refused"), [
    ("data.name", "synthetic", True), ("model.name", "conv", True), ("model.hidden", [64, 32], True),
    ("data.root", "/elsewhere", False), ("data.download", False, False), ("optim.lr", 0.5, False),
])
def test_which_config_changes_a_checkpoint_refuses(key, value, refused):
    saved = to_dict(load_config(TINY[1], []))
    current = copy.deepcopy(saved)
    section, name = key.split(".")
    current[section][name] = value
    if not refused:
        checkpoint.check_compatible(saved, current, Path("step_00000010.pt"))
        return
    with pytest.raises(UsageError) as raised:
        checkpoint.check_compatible(saved, current, Path("step_00000010.pt"))
    assert raised.value.lines()[0].startswith(f"error: checkpoint was made with {key}=")


def test_finished_run_rerun_says_complete_and_changes_nothing(reference_runs, tmp_path):
    run_dir = copy_run(reference_runs((), 1), tmp_path)
    before = snapshot(run_dir)
    result = run_train([*TINY, f"run.dir={run_dir}"], tmp_path)
    assert f"run complete: {run_dir} (step {TINY_STEPS.total})" in result.stdout
    assert "step 5/" not in result.stdout  # no training
    assert snapshot(run_dir) == before


def test_resume_never_refuses_a_folder_that_holds_a_run(reference_runs, tmp_path):
    run_dir = copy_run(reference_runs((), 1), tmp_path)
    before = snapshot(run_dir)
    result = run_train([*TINY, f"run.dir={run_dir}", "train.resume=never"], tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: train.resume=never") and result.stderr.count("\n") == 1, result.stderr
    assert snapshot(run_dir) == before


def test_resume_from_a_path_continues_in_a_new_folder(reference_runs, tmp_path):
    reference = reference_runs((), 1)
    run_dir = tmp_path / "branch"
    start = checkpoint_path(reference, TINY_STEPS.kept()[0])  # step 50, mid-epoch 3
    result = run_train([*TINY, f"run.dir={run_dir}", f"train.resume={start}"], tmp_path)
    assert resumed_from(result.stdout) == start.name
    assert_bitwise_equal(load_weights(run_dir / "model.pt"), load_weights(reference / "model.pt"))
    assert [r["step"] for r in metrics(run_dir)] == [r["step"] for r in metrics(reference) if r["step"] > TINY_STEPS.kept()[0]]
    own_id = (run_dir / "run.json").read_text()
    source_id = (reference / "run.json").read_text()
    assert '"wandb_run_id"' in own_id and own_id.split('"wandb_run_id"')[1] != source_id.split('"wandb_run_id"')[1]
