"""Values that reach a shell, a batch script, an SSH command line or a file name (launch/shell.py):
a control character in any of them is refused with one line naming the key; anything else
(`$(...)`, backticks, `;`, quotes, spaces, unicode) arrives verbatim and runs nothing, in the
batch script submitit writes (read back as sbatch reads it, and run) and on the local SLURM cluster
through both launchers (submitit, and slurm/train.sbatch).

    /work/main/.venv/bin/python -m pytest tests/test_launch_security.py -q    # SLURM part as root
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from launch import cli
from launch.jobs import REGISTRY, Record
from tests.helpers.commands import PYTHON, REPO, TINY, clean_env
from tests.helpers.slurm import SlurmCluster, fake_scripts, install_fake, sbatch_options

DIGITS = ["--config", str(REPO / "configs" / "digits.yaml")]


def hostile(marker: Path) -> str:
    """Quotes, both substitutions, a separator, spaces, a comment sign and unicode: each would run `touch` if unquoted."""
    return f"x y'q\"$(touch {marker})`touch {marker}`;touch {marker} #é日本"


def hostile_word(marker: Path) -> str:
    """The same without whitespace (a partition is one word in sinfo's listing)."""
    return f"p'q\"$(touch${{IFS}}{marker})`touch${{IFS}}{marker}`;é"


def one_error(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.fast
@pytest.mark.parametrize(("argv", "where"), [
    (["run.dir=runs/x\ntouch MARKER #"], "(run.dir)"),
    (["run.dir=runs/x\rtouch MARKER"], "(run.dir)"),
    (["run.dir=runs/100%j"], "(run.dir)"),
    (["run.dir=runs/a\\b"], "(run.dir)"),
    (["--job-name", "a\ntouch MARKER"], "(--job-name)"),
    (["--partition", "gpu\x1b[2J"], "(--partition)"),
    (["--account", "a\x00b"], "(--account)"),
    (["--qos", "a\u2028b"], "(--qos)"),
    (["--constraint", "a\\b"], "(--constraint)"),
    (["--sbatch", "comment=a\ntouch MARKER"], "(--sbatch comment)"),
    (["--sbatch", "mail-type\n#=END"], "(--sbatch mail-type\\n#)"),
    (["--setup", "module load x\r"], "(--setup)"),
    (["--time", "10\n"], "(--time)"),
    (["--sweep", "wandb.name=a\nb,c"], "(--sweep)"),
    (["--remote=-oProxyCommand=touch MARKER"], "(--remote)"),
    (["--remote", "login\ntouch"], "(--remote)"),
    (["--remote", "login", "--remote-dir", "w\x1b]0;x\x07"], "(--remote-dir)"),
    (["--remote", "login", "--ssh-config", "c\nProxyCommand touch MARKER"], "(--ssh-config)"),
    (["--remote", "login", "--remote-setup", "source a\x00"], "(--remote-setup)"),
])
def test_control_characters_are_refused_naming_the_key(argv: list[str], where: str, tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_error(["--executor", "local", *argv, *DIGITS, "train.epochs=1",
                      *([] if "run.dir" in argv[0] else ["run.dir=r"])], capsys)
    assert where in line, line
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / REGISTRY).exists() and not (tmp_path / "r").exists()


def test_a_profile_value_is_refused_naming_the_file_and_key(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    profile = tmp_path / "p.yaml"
    profile.write_text('executor: local\nqos: "normal\\ntouch MARKER"\n')
    assert f"({profile}: qos)" in one_error(["--cluster", str(profile), *DIGITS], capsys)
    profile.write_text('executor: local\nsbatch: {comment: "a\\rb"}\n')
    assert f"({profile}: sbatch comment)" in one_error(["--cluster", str(profile), *DIGITS], capsys)


def test_hostile_values_arrive_verbatim_in_the_batch_script(tmp_path: Path, monkeypatch, capsys) -> None:
    """Every value submitit writes into the batch script, read back as sbatch reads `#SBATCH` lines and as bash
    reads the srun line; the fake sbatch runs the script with bash: no marker appears."""
    marker = tmp_path / "MARKER"
    text, word = hostile(marker), hostile_word(marker)
    bin_dir = install_fake(tmp_path / "slurm", partitions=("debug", word))
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(PYTHON).parent}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    argv = ["--job-name", text, "--partition", word, "--account", text, "--qos", text, "--constraint", text,
            "--sbatch", f"comment={text}", *DIGITS, f"run.dir=runs/{text}"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / text
    record = Record.from_json((tmp_path / REGISTRY).read_text().splitlines()[-1])
    assert record.runs[0].run_dir == str(run_dir)
    (script,) = fake_scripts(tmp_path / "slurm")
    options = sbatch_options(script.read_text())
    assert options["output"] == f"{run_dir}/submitit/%j_0_log.out"
    assert {key: options[key] for key in ("job-name", "partition", "account", "qos", "constraint", "comment")} == {
        "job-name": text, "partition": word, "account": text, "qos": text, "constraint": text, "comment": text}
    (srun,) = [shlex.split(line) for line in script.read_text().splitlines() if line.startswith("srun ")]
    assert srun[srun.index("--output") + 1] == f"{run_dir}/submitit/%j_%t_log.out" and srun[-1] == f"{run_dir}/submitit"
    assert (tmp_path / "slurm" / "scripts" / "0.out").exists()  # the script ran
    assert not marker.exists()


@pytest.mark.slurm
def test_hostile_run_dir_on_the_local_slurm_cluster(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The same run.dir (and job name) through submitit and through `sbatch slurm/train.sbatch`: both jobs complete,
    the run folders and the batch log are at the verbatim path, and nothing ran the marker's `touch`."""
    marker = tmp_path / "MARKER"
    text = hostile(marker)
    env = clean_env(tmp_path, SLURM_CONF=str(slurm_cluster.slurm_conf), AE_DIST_PYTHON=PYTHON)
    sbatch = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--time=10", f"--job-name={text}",
                             f"--output={tmp_path}/slurm-%j.out", str(REPO / "slurm" / "train.sbatch"), *TINY,
                             "train.epochs=1", f"run.dir={tmp_path / 'sbatch' / text}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert sbatch.returncode == 0, sbatch.stderr
    job = sbatch.stdout.strip().split(";")[0]
    launched = subprocess.run([PYTHON, "-m", "launch", "--cpus-per-task", "1", "--time", "10", "--job-name", text,
                               "--setup", "echo the batch shell ran", *TINY, "train.epochs=1", f"run.dir=submitit/{text}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    record = Record.from_json((tmp_path / REGISTRY).read_text().splitlines()[-1])
    names = slurm_cluster.run(["squeue", "-h", "-j", f"{job},{record.job_id}", "-o", "%j"])  # sacct's copy is mangled
    assert names.stdout.splitlines() == [text, text]
    for job_id in (job, record.job_id):
        assert slurm_cluster.wait_state(job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 300) == "COMPLETED"
    for run_dir in (tmp_path / "submitit" / text, tmp_path / "sbatch" / text):
        assert (run_dir / "model.pt").is_file(), run_dir
    assert record.runs[0].run_dir == str(tmp_path / "submitit" / text)
    assert "the batch shell ran" in Path(record.runs[0].logs[0]).read_text()  # #SBATCH --output read verbatim
    assert not marker.exists()
