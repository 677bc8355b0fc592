"""Submit from a laptop: the same `python -m launch`, run on a login node over SSH.

Only the system `ssh` is used, so the user's ssh config applies as it is (keys, agents,
ProxyJump, ControlMaster); the tool stores no password or key. A submission is one SSH
connection: a tar of the code (the git-tracked files plus new files git does not ignore,
as they are in the working tree) and the resolved config goes in on stdin, lands in
`<remote-dir>/code/<content hash>/` and `<remote-dir>/submissions/<stamp>-<unique>/config.yaml`,
and `python -m launch --json ...` runs there with that code first on PYTHONPATH. status,
logs, cancel and fetch run the same subcommands there and bring their output back.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ae_dist.errors import UsageError
from launch.jobs import Record, unpack

REPO = Path(__file__).resolve().parent.parent
CONNECT_TIMEOUT_S = 10
SSH_UNREACHABLE = 255
SSH_EXIT_WAIT_S = 5  # after Ctrl-C: how long ssh gets to close its session before it is killed
SUBMISSION_CONFIG = ".submission-config.yaml"
HAS_DEPS = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('submitit', 'torch', 'yaml')))"
NO_PYTHON_DEPS = ("error: python3 on %s cannot import torch, submitit and yaml (--remote-setup): activate the "
                  "environment that has them, e.g. --remote-setup 'source ~/venvs/ae-dist/bin/activate'")


@dataclass(frozen=True)
class Remote:
    host: str
    work_dir: str = "ae-dist"  # relative paths are below the remote home
    setup: tuple[str, ...] = ()  # shell lines before python there (venv activation, module loads)
    ssh_config: str | None = None

    def ssh(self, command: str) -> list[str]:
        cmd = ["ssh"]
        if self.ssh_config:
            cmd += ["-F", self.ssh_config]
        cmd += ["-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        if not sys.stdin.isatty():
            cmd += ["-o", "BatchMode=yes"]  # no prompt nobody can answer: fail instead of hanging
        return [*cmd, self.host, command]

    def script(self, *lines: str, code: str = "current") -> str:
        """A bash login shell (module systems live there) in the work folder, setup done, our code first."""
        body = ["set -e", f"mkdir -p {self._dir()}", f"cd {self._dir()}", *self.setup,
                f'export PYTHONPATH="$PWD/code/{code}${{PYTHONPATH:+:$PYTHONPATH}}"', *lines]
        return "bash -lc " + shlex.quote("\n".join(body))

    def _dir(self) -> str:
        if self.work_dir == "~":
            return '"$HOME"'
        if self.work_dir.startswith("~/"):
            return '"$HOME"/' + shlex.quote(self.work_dir[2:])
        return shlex.quote(self.work_dir)

    def run(self, command: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        """Run there and capture stdout; stderr comes through; a failed connection is a one-line error."""
        result = subprocess.run(self.ssh(command), input=stdin, capture_output=True, check=False)
        err = result.stderr.decode("utf-8", "replace")
        if result.returncode == SSH_UNREACHABLE:
            self._unreachable(err)
        sys.stderr.write(err)
        return result

    def _unreachable(self, err: str) -> None:
        reason = (err.strip().splitlines() or ["no answer"])[-1]
        raise UsageError(f"cannot reach {self.host} over SSH ({reason})", "--remote",
                         f"check that `ssh {self.host} true` works (host name, keys, ProxyJump in your ssh config)")

    def launch(self, args: list[str], code: str = "current") -> str:
        return self.script("exec python3 -m launch " + shlex.join(args), code=code)


def code_files(repo: Path = REPO) -> list[Path]:
    """The git-tracked files and new files git does not ignore, as they are now."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        raise UsageError("cannot list the code to ship (no git checkout)", str(repo),
                         "run from a git clone of ae-dist") from None
    names = sorted({name for name in out.decode().split("\0") if name})
    return [repo / name for name in names if (repo / name).is_file()]


def snapshot(config_yaml: str, repo: Path = REPO) -> tuple[str, bytes]:
    """(content hash of the code, tar.gz of the code plus the resolved config)."""
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in code_files(repo):
            name = path.relative_to(repo).as_posix()
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
            _add(tar, name, data, path.stat().st_mode & 0o777)
        _add(tar, SUBMISSION_CONFIG, config_yaml.encode(), 0o644)
    return digest.hexdigest()[:12], buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def submit(remote: Remote, config_yaml: str, launch_args: list[str]) -> Record:
    """Ship code and config, submit there; the record comes back as JSON on stdout's last line.

    Each submission gets its own folder, made by `mktemp -d` there (atomic, unique however many
    launchers run at once); the code snapshot is renamed into place and `code/current` replaced
    by a rename, so submissions side by side never see each other's half-written files.
    """
    code_id, payload = snapshot(config_yaml)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{code_id[:6]}"
    unpack_lines = [
        "mkdir -p code submissions",
        f"submission=$(mktemp -d submissions/{stamp}-XXXXXX)",
        f"stage=$(mktemp -d code/.incoming-{code_id}.XXXXXX)",
        'tar -xzf - -C "$stage"',
        f'mv "$stage/{SUBMISSION_CONFIG}" "$submission/config.yaml"',
        f'if [ -d code/{code_id} ]; then rm -rf "$stage"; else mv -T "$stage" code/{code_id} 2>/dev/null || rm -rf "$stage"; fi',
        f'ln -sfn {code_id} "code/.current-$$" && mv -T "code/.current-$$" code/current',
    ]
    check = (f"python3 -c {shlex.quote(HAS_DEPS)} 2>/dev/null || {{ echo {shlex.quote(NO_PYTHON_DEPS % remote.host)} >&2;"
             " exit 2; }")
    launch = 'exec python3 -m launch submit --json --config "$submission/config.yaml" ' + shlex.join(launch_args)
    result = remote.run(remote.script(*unpack_lines, check, launch, code=code_id), stdin=payload)
    lines = result.stdout.decode("utf-8", "replace").splitlines()
    if result.returncode:
        raise SystemExit(result.returncode)  # the remote launcher has said why, on stderr
    found = [line for line in lines if line.startswith("{")]
    if not found:
        raise UsageError("the login node answered without a job record", remote.host,
                         "check --remote-setup: python3 there must import torch and submitit")
    return Record.from_json(found[-1])


def passthrough(remote: Remote, args: list[str]) -> int:
    """status / logs / cancel there, output streamed here as it comes.

    ssh's stdin is a pipe this process holds open and never writes: when this process ends
    (Ctrl-C, a kill), ssh sees its end, the session closes, and `logs --until-stdin-closes`
    there sees its stdin close and exits; nothing keeps following on the login node.
    """
    with subprocess.Popen(remote.ssh(remote.launch(args)), stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            err = proc.stderr.read().decode("utf-8", "replace")
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            try:
                proc.wait(timeout=SSH_EXIT_WAIT_S)
            except subprocess.TimeoutExpired:  # ssh still mid-connection, or wedged: it holds our stdout open
                proc.kill()
                proc.wait()
            raise
    if code == SSH_UNREACHABLE:
        remote._unreachable(err)
    sys.stderr.write(err)
    return code


def fetch(remote: Remote, job_id: str | None, to: Path) -> list[Path]:
    args = ["fetch", *([job_id] if job_id else []), "--to", "-"]
    with tempfile.TemporaryFile() as err_file:
        with subprocess.Popen(remote.ssh(remote.launch(args)), stdout=subprocess.PIPE, stderr=err_file) as proc:
            try:
                folders, damaged = unpack(proc.stdout, to), None
            except (tarfile.TarError, OSError, EOFError) as error:
                folders, damaged = [], error
                proc.stdout.read()  # let the remote side finish writing
            code = proc.wait()
        err_file.seek(0)
        err = err_file.read().decode("utf-8", "replace")
    if code == SSH_UNREACHABLE:
        remote._unreachable(err)
    sys.stderr.write(err)
    if code:
        raise SystemExit(code)
    if damaged is not None:
        raise UsageError(f"the run folders arrived damaged ({damaged})", str(to), "run fetch again")
    return folders
