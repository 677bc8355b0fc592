"""A private sshd on 127.0.0.1 for the `--remote` tests: its own host key, one client key, one port.

`start_sshd(folder)` writes the server config, host and client keys, an authorized_keys file and
a client ssh config (a `Host` alias with the port, key and known host) into ``folder``, starts
`sshd -D` there and waits until it answers; `Sshd.stop()` stops that process, by pid. Nothing
outside ``folder`` is changed except `/run/sshd`, the privilege-separation folder sshd needs.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
START_TIMEOUT_S = 20


@dataclass
class Sshd:
    host: str  # the alias the client config defines
    ssh_config: Path
    port: int
    process: subprocess.Popen
    log: Path

    def ssh(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), self.host, command], capture_output=True, text=True,
                              timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def available() -> str | None:
    """Why no sshd can be started here, or None."""
    for tool in (SSHD, "ssh", "ssh-keygen"):
        if not shutil.which(tool) and not Path(tool).exists():
            return f"{tool} is not installed (apt-get install openssh-server openssh-client)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sshd(folder: Path, host: str = "aedist-login") -> Sshd:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(folder / name)],
                       check=True, capture_output=True)
        (folder / name).chmod(0o600)
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    port = _free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"AllowUsers {getpass.getuser()}\nLogLevel ERROR\n")
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {(folder / 'host_key.pub').read_text()}")
    ssh_config = folder / "ssh_config"
    ssh_config.write_text(
        f"Host {host}\n  HostName 127.0.0.1\n  Port {port}\n  User {getpass.getuser()}\n"
        f"  IdentityFile {folder / 'client_key'}\n  IdentitiesOnly yes\n  UserKnownHostsFile {folder / 'known_hosts'}\n"
        f"  StrictHostKeyChecking yes\n  BatchMode yes\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = folder / "sshd.log"
    with open(log, "w") as out:
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=out, stderr=out)
    server = Sshd(host, ssh_config, port, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}: {log.read_text()[-2000:]}")
        if server.ssh("true", timeout=10).returncode == 0:
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"sshd on port {port} did not accept the key within {START_TIMEOUT_S}s: {log.read_text()[-2000:]}")
