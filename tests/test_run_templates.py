"""run.dir templates ({wandb_run_id}, {date}, {time}) and the W&B sweep that relies on them.

    /work/main/.venv/bin/python -m pytest tests/test_run_templates.py -q
    /work/main/.venv/bin/python -m pytest tests/test_run_templates.py -q -m slurm   # the sbatch requeue (as root)

Each launch of a templated command gets a folder of its own, printed and stored in run.json;
a rerun with the printed folder resumes it; a requeued sbatch job (same SLURM job id) lands
in the same folder; the sweep YAML names only valid overrides.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from ae_dist.config import load_config
from ae_dist.config.templates import template_problems
from ae_dist.dist.job import Job
from ae_dist.run.folder import read_run_info
from ae_dist.run.templates import RESOLVED, resolve_template
from tests.helpers.commands import PYTHON, REPO, TINY, clean_env, run_train, wait_for
from tests.helpers.slurm import SlurmCluster

SWEEP = REPO / "configs" / "sweeps" / "digits.yaml"
PRINTED = re.compile(r"^run folder: (\S+) \(run\.dir template ", re.M)


@pytest.mark.fast
def test_fields_are_filled_once_per_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    now = datetime.datetime(2026, 3, 4, 5, 6, 7)
    first = resolve_template("runs/{date}_{time}/{wandb_run_id}", "slurm-77", now)
    assert re.fullmatch(r"runs/2026-03-04_050607/[0-9a-f]{8}", first)
    assert read_run_info(Path(first))["wandb_run_id"] == first.rsplit("/", 1)[1]
    assert read_run_info(Path(first))["run_dir_template"] == "runs/{date}_{time}/{wandb_run_id}"
    assert resolve_template("runs/{date}_{time}/{wandb_run_id}", "slurm-77") == first  # a requeue: same folder
    assert resolve_template("runs/{date}_{time}/{wandb_run_id}", "slurm-78") != first
    assert resolve_template("runs/{date}", "", now) == "runs/2026-03-04"
    assert resolve_template("runs/{date}", "", now) == "runs/2026-03-04-2"  # no key: a new folder each time
    assert resolve_template("runs/plain", "slurm-77") == "runs/plain"
    assert len((tmp_path / "runs" / RESOLVED).read_text().splitlines()) == 2  # one line per keyed resolution, none without


@pytest.mark.fast
def test_concurrent_launches_get_one_folder_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    now = datetime.datetime(2026, 3, 4, 5, 6, 7)
    found: list[str] = []
    threads = [threading.Thread(target=lambda key=key: found.append(resolve_template("runs/{time}", key, now)))
               for key in ("slurm-1", "slurm-2", "slurm-3", "slurm-4")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(found) == ["runs/050607", "runs/050607-2", "runs/050607-3", "runs/050607-4"]


@pytest.mark.fast
@pytest.mark.parametrize(("env", "key"), [
    ({}, ""),
    ({"TORCHELASTIC_RUN_ID": "none"}, ""),
    ({"TORCHELASTIC_RUN_ID": "abc"}, "torchrun-abc"),
    ({"SLURM_JOB_ID": "12", "TORCHELASTIC_RUN_ID": "abc"}, "slurm-12"),
    ({"SLURM_JOB_ID": "15", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3"}, "slurm-12_3"),
    ({"SLURM_JOB_ID": "12", "WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "r1"}, "wandb-r1"),
])
def test_launch_key(env, key):
    assert Job.from_env(env).launch_key == key


@pytest.mark.fast
@pytest.mark.parametrize("template", ["runs/{foo}", "runs/{}", "runs/{0}", "runs/{date:%Y}", "runs/{date!r}", "runs/{"])
def test_bad_templates_are_usage_errors(template):
    (problem,) = template_problems(template)
    assert problem[1] == "run.dir" and "{wandb_run_id}" in problem[2]


def printed_folder(output: str) -> Path:
    (folder,) = PRINTED.findall(output)
    return Path(folder)


def test_two_launches_make_two_folders_and_the_printed_one_resumes(tmp_path):
    template = str(tmp_path / "runs" / "{wandb_run_id}")
    args = [*TINY, "train.epochs=1", "wandb.mode=disabled", f"run.dir={template}"]
    first = printed_folder(run_train(args, tmp_path).stdout)
    second = printed_folder(run_train(args, tmp_path).stdout)
    assert first != second and first.parent == second.parent == tmp_path / "runs"
    for folder in (first, second):
        assert (folder / "model.pt").exists()
        assert read_run_info(folder)["wandb_run_id"] == folder.name
        assert read_run_info(folder)["run_dir_template"] == template
        assert yaml.safe_load((folder / "config.yaml").read_text())["run"]["dir"] == str(folder)

    again = run_train([*TINY, "train.epochs=2", "wandb.mode=disabled", f"run.dir={first}"], tmp_path)
    assert "resumed from" in again.stdout and "run folder:" not in again.stdout
    epochs = [r for r in map(json.loads, (first / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert read_run_info(first)["wandb_run_id"] == first.name
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == sorted([first.name, second.name])


def test_two_ranks_agree_on_the_folder(tmp_path):
    template = str(tmp_path / "runs" / "{date}-{time}")
    done = run_train([*TINY, "train.epochs=1", "wandb.mode=disabled", f"run.dir={template}"], tmp_path, nproc=2)
    folder = printed_folder(done.stdout)
    assert [p for p in (tmp_path / "runs").iterdir() if p.is_dir()] == [folder]
    assert (folder / "model.pt").exists()


# The sweep: configs/sweep.yaml under `wandb agent`


def sweep_values(spec: dict) -> list:
    """The values a sweep parameter can take that the test can try: its list, its value, its bounds."""
    return [*spec.get("values", []), *([spec["value"]] if "value" in spec else []),
            *[spec[bound] for bound in ("min", "max") if bound in spec]]


@pytest.mark.fast
def test_sweep_yaml_names_only_valid_overrides():
    sweep = yaml.safe_load(SWEEP.read_text())
    command = sweep["command"]
    assert command[command.index("-m") + 1] == "ae_dist.train" and command[-1] == "${args_no_hyphens}"
    config = command[command.index("--config") + 1]
    assert (REPO / config).is_file()
    assert sweep["metric"]["name"] in ("epoch/test_loss", "best_test_loss")
    for key, spec in sweep["parameters"].items():
        values = sweep_values(spec)
        assert values, key
        for value in values:
            load_config(REPO / config, [f"{key}={value}"])  # raises UsageError for an unknown key or a bad value
    assert "{wandb_run_id}" in sweep["parameters"]["run.dir"]["value"]


def test_agent_sbatch_runs_the_sweep_agent():
    script = (REPO / "slurm" / "wandb-agent.sbatch").read_text()
    assert "#SBATCH --array=" in script and "wandb agent" in script
    assert subprocess.run(["bash", "-n", str(REPO / "slurm" / "wandb-agent.sbatch")]).returncode == 0


# A requeued sbatch job lands in the same folder (the local SLURM cluster)


@pytest.mark.slurm
def test_requeued_sbatch_job_lands_in_the_same_folder(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    env = clean_env(tmp_path, SLURM_CONF=str(slurm_cluster.slurm_conf), AE_DIST_PYTHON=PYTHON)
    template = str(tmp_path / "runs" / "{wandb_run_id}")
    result = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                             "--time=10", f"--output={tmp_path}/slurm-%j.out", str(REPO / "slurm" / "train.sbatch"),
                             *TINY, "train.epochs=6", "train.threads=1", f"run.dir={template}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip().split(";")[0]
    log = tmp_path / f"slurm-{job_id}.out"
    try:
        wait_for(lambda: log.exists() and '"kind": "train"' in "".join(
            p.read_text() for p in (tmp_path / "runs").glob("*/metrics.jsonl")), 180, "the first logged step")
        slurm_cluster.run(["scancel", "--signal=USR1", job_id])  # what --signal=USR1@120 sends before the limit
        wait_for(lambda: "done:" in log.read_text() or "exited with status" in log.read_text(), 300, "the job to end")
    finally:
        slurm_cluster.run(["scancel", job_id], check=False)
    output = log.read_text()
    assert "requeueing job" in output and "(restart 1)" in output and "resumed from" in output, output
    folders = PRINTED.findall(output)
    assert len(folders) == 2 and folders[0] == folders[1], output  # each start printed the same folder
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()] == [Path(folders[0]).name]
    assert (Path(folders[0]) / "model.pt").exists()
    assert json.loads((tmp_path / "runs" / RESOLVED).read_text())["key"] == f"slurm-{job_id}"


def test_the_launcher_fills_a_template_once_per_submission(tmp_path: Path) -> None:
    """Through `python -m launch` the folder is made at submission: the job (and its requeues) gets it as is."""
    from launch.jobs import REGISTRY, Record

    template = str(tmp_path / "runs" / "{wandb_run_id}")
    result = subprocess.run([PYTHON, "-m", "launch", "--executor", "local", "--wait", *TINY, "train.epochs=1",
                             f"run.dir={template}"], cwd=tmp_path, env=clean_env(tmp_path), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = Record.from_json((tmp_path / REGISTRY).read_text().splitlines()[-1])
    folder = Path(record.runs[0].run_dir)
    assert "{" not in str(folder) and folder.parent == tmp_path / "runs"
    assert folder.name == record.runs[0].wandb_run_id == read_run_info(folder)["wandb_run_id"]
    assert (folder / "model.pt").exists()
    assert yaml.safe_load((folder / "config.yaml").read_text())["run"]["dir"] == str(folder)
