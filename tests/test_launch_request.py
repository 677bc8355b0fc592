"""The launcher's one request dataclass (`launch.request.Request`): flags, profile keys, help, the
login node's flags and submitit's parameters all come from its fields; `--sbatch KEY=VALUE` and a
profile's `sbatch:` mapping reach the batch script as they are; `--array-parallelism` throttles a
sweep; profiles are found in ./configs/clusters, ~/.config/ae-dist/clusters, then the packaged ones.

    /work/main/.venv/bin/python -m pytest tests/test_launch_request.py -q
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ae_dist.config import PACKAGED_CONFIGS
from launch import cli, profiles, request
from launch.jobs import REGISTRY, Record
from tests.helpers.commands import REPO
from tests.helpers.slurm import fake_scripts, install_fake, sbatch_options

DIGITS = ["--config", str(REPO / "configs" / "digits.yaml")]


def one_error(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.fast
def test_every_field_is_a_flag_a_profile_key_and_a_help_line(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside a help line
    names = {f.name for f in dataclasses.fields(request.Request)} - {"origin"}
    assert set(request.FIELDS) == names == set(profiles.KEYS)
    parser = cli.submit_parser()
    flags = {action.dest: action.option_strings for action in parser._actions}
    text = " ".join(parser.format_help().split())
    for name, f in request.FIELDS.items():
        assert flags[name] == [request.flag_of(f)], name
        assert f.metadata["help"] in text, name
    assert request.flag_of(request.FIELDS["host"]) == "--remote" and "--array-parallelism" in text
    assert "they are shell and run as written" in text  # setup lines are shell on purpose, and --help says so


def test_the_login_node_gets_the_same_request() -> None:
    """request.to_args, parsed again as the login node parses it, gives an equal request (SSH settings stay here)."""
    argv = ["--nodes", "2", "--gpus-per-node", "4", "--mem-gb", "12.5", "--time", "1-02:00", "--partition=-gpu",
            "--account", "proj é", "--setup", "module load cuda\nsource 'my venv'/bin/activate", "--sbatch", "gres=gpu:4",
            "--sbatch", "comment=a=b c", "--sbatch", "exclusive", "--array-parallelism", "3", "--job-name", "x y",
            "--remote", "login", "--remote-dir", "w d", "--signal-delay-s", "0"]
    sent = cli.request_of(cli.submit_parser().parse_intermixed_args(argv))
    there = cli.request_of(cli.submit_parser().parse_intermixed_args(request.to_args(sent)))
    assert there == dataclasses.replace(sent, host=None, remote_dir="ae-dist")
    assert sent.sbatch == (("gres", "gpu:4"), ("comment", "a=b c"), ("exclusive", True))
    assert not any(arg.startswith(("--remote", "--ssh")) for arg in request.to_args(sent))


def test_submitit_parameters_come_from_the_fields() -> None:
    req = request.build({"nodes": "2", "gpus_per_node": "4", "cpus_per_task": "8", "mem_gb": "64", "time": "2:00:00",
                         "partition": "gpu", "qos": "high", "setup": "module load cuda", "sbatch": ["gres=gpu:4"],
                         "array_parallelism": "2", "job_name": "exp"}, {})
    assert request.submitit_parameters(req) == {
        "stderr_to_stdout": True, "nodes": 2, "gpus_per_node": 4, "tasks_per_node": 4, "cpus_per_task": 8, "mem_gb": 64.0,
        "timeout_min": 120, "slurm_partition": "gpu", "slurm_qos": "high", "slurm_signal_delay_s": 120,
        "slurm_array_parallelism": 2, "slurm_additional_parameters": {"requeue": True, "gres": "gpu:4"},
        "slurm_setup": ["module load cuda"], "name": "exp"}


def test_sbatch_options_and_array_throttle_reach_the_batch_script(tmp_path: Path, monkeypatch, capsys) -> None:
    """The profile's sbatch: mapping and --sbatch items (key by key, the flag wins) become #SBATCH lines, as sbatch
    reads them; a 3-point sweep with --array-parallelism 2 is `--array=0-2%2`."""
    bin_dir = install_fake(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(cli.sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    profile = tmp_path / "mine.yaml"
    profile.write_text("partition: debug\nsbatch:\n  gres: gpu:1\n  mail_type: END\n  exclusive: true\n")
    argv = ["--cluster", str(profile), "--sbatch", "gres=gpu:2", "--sbatch", "reservation=maint", "--array-parallelism",
            "2", "--sweep", "optim.lr=1e-3,2e-3,3e-3", *DIGITS, "run.dir=sweep"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    (script,) = fake_scripts(tmp_path / "slurm")
    options = sbatch_options(script.read_text())
    assert {key: options.get(key) for key in ("gres", "mail-type", "exclusive", "reservation", "array", "requeue",
                                               "partition")} == {
        "gres": "gpu:2", "mail-type": "END", "exclusive": True, "reservation": "maint", "array": "0-2%2", "requeue": True,
        "partition": "debug"}
    record = Record.from_json((tmp_path / REGISTRY).read_text().splitlines()[-1])
    assert [run.job_id for run in record.runs] == ["4200_0", "4200_1", "4200_2"]


@pytest.mark.parametrize(("argv", "where"), [
    (["--sbatch", "nodes=3"], "--sbatch nodes): use --nodes"),
    (["--sbatch", "array=0-3"], "--sbatch array): use --array-parallelism"),
    (["--sbatch", "output=/tmp/x"], "--sbatch output)"),
    (["--sbatch=w=node1"], "--sbatch w)"),
    (["--sbatch", "Gres=gpu:1"], "--sbatch Gres)"),
    (["--sbatch", "=x"], "--sbatch )"),
    (["--array-parallelism", "0"], "(--array-parallelism)"),
])
def test_bad_sbatch_options_are_one_line_errors(argv: list[str], where: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_error(["--executor", "local", *argv, *DIGITS, "run.dir=r"], capsys)
    assert where in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.fast
@pytest.mark.parametrize(("item", "needle"), [
    ("arr=0-1", "sbatch option arr is the launcher's own: sbatch reads it as --array"),
    ("outp=/tmp/x", "sbatch reads it as --output (--sbatch outp): for --output, leave it out"),
    ("tim=10", "sbatch reads it as --time (--sbatch tim): for --time, use --time"),
    ("ntasks=7", "sbatch option ntasks is the launcher's own (--sbatch ntasks): use --nodes and --tasks-per-node"),
    ("gpus-per-t=1", "sbatch reads it as --gpus-per-task"),
    ("gpus=2", "sbatch option gpus is the launcher's own (--sbatch gpus): use --gpus-per-node"),
    ("cpus-per-ta=4", "sbatch reads it as --cpus-per-task (--sbatch cpus-per-ta): for --cpus-per-task, use --cpus-per-task"),
    ("part=gpu", "sbatch reads it as --partition"),
    ("sig=USR1@60", "sbatch reads it as --signal"),
    ("req", "sbatch reads it as --requeue"),
    ("exc=n1", "sbatch reads it as --exclude"),
    ("job=x", "sbatch reads it as --job-name"),
    ("open=append", "sbatch reads it as --open-mode"),
    ("wra=true", "sbatch reads it as --wrap"),
    ("er=/tmp/e", "sbatch reads it as --error"),
    ("no", "sbatch reads it as --nodes or --no-requeue or --no-kill"),
])
def test_abbreviated_sbatch_options_are_refused_like_their_full_names(item: str, needle: str, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    """sbatch takes any unambiguous prefix of a long option, in #SBATCH lines too: `arr=0-1` is `--array=0-1`."""
    monkeypatch.chdir(tmp_path)
    line = one_error(["--executor", "local", "--sbatch", item, *DIGITS, "run.dir=r"], capsys)
    assert needle in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.fast
def test_options_that_only_begin_like_a_refused_one_pass() -> None:
    """Full names of other options pass, however they begin: --time-min, --mem-per-cpu, --exclusive, --ntasks-per-core."""
    from launch import checks

    for key in ("time-min", "mem-per-cpu", "mem-per-gpu", "exclusive", "ntasks-per-core", "gpus-per-socket", "gres",
                "nodelist", "reservation", "mail-type"):
        assert checks.refused_as(key) == [], key
    assert sorted(checks.refused_as("gpus-per")) == ["gpus-per-node", "gpus-per-task"]


def test_profile_sbatch_keys_checked_and_unknown_profile_keys_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    profile = tmp_path / "p.yaml"
    profile.write_text("executor: local\nsbatch:\n  time: '10'\n")
    assert f"({profile}: sbatch time): use --time" in one_error(["--cluster", str(profile), *DIGITS], capsys)
    profile.write_text("executor: local\ngres: gpu:1\n")
    line = one_error(["--cluster", str(profile), *DIGITS], capsys)
    assert f"unknown cluster profile key ({profile}: gres)" in line and "sbatch:" in line


@pytest.mark.fast
def test_profiles_are_found_here_then_in_the_home_then_in_the_package(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / ".config" / "ae-dist" / "clusters"
    here = tmp_path / "configs" / "clusters"
    assert profiles.profile_path("local") == PACKAGED_CONFIGS / "clusters" / "local.yaml"
    home.mkdir(parents=True)
    (home / "local.yaml").write_text("partition: home\n")
    assert profiles.profile_path("local") == home / "local.yaml"
    here.mkdir(parents=True)
    (here / "local.yaml").write_text("partition: here\n")
    assert profiles.load_profile("local") == {"partition": "here"}
    line = one_error(["--cluster", "nowhere", *DIGITS], capsys)
    assert f"configs/clusters, {home}, {PACKAGED_CONFIGS / 'clusters'}" in line  # where it looked
    assert f"local ({Path('configs/clusters/local.yaml')})" in line  # which file each name stands for
    assert f"example ({PACKAGED_CONFIGS / 'clusters' / 'example.yaml'})" in line
