"""A throw-away OpenSSH server on 127.0.0.1 so the SSH target is tested against real host-key checks.

CI may start one with `.ci/start-sshd` and advertise it through EDGEKIT_TEST_SSHD_* variables; without
them the fixture starts its own. A missing sshd fails the tests loudly: skipping would let the whole
remote-device path go untested without anyone noticing.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install -y openssh-server openssh-client"
ENV_PREFIX = "EDGEKIT_TEST_SSHD_"
ENV_KEYS = ("HOST", "PORT", "USER", "IDENTITY", "KNOWN_HOSTS")


@dataclass(frozen=True)
class Sshd:
    """How to reach the test server; `known_hosts_file` already trusts its host key."""

    host: str
    port: int
    user: str
    identity_file: str
    known_hosts_file: str
    host_key: str  # "ssh-ed25519 AAAA…", as a known_hosts line carries it

    def known_hosts_line(self, key: str | None = None) -> str:
        return f"[{self.host}]:{self.port} {key or self.host_key}\n"

    def profile(self, workdir: Path, **fields) -> dict:
        """A device profile (as YAML data) for this server; `fields` override or add to it."""
        data = {
            "description": "loopback sshd for tests", "arch": "any", "connection": "ssh",
            "host": self.host, "port": self.port, "user": self.user, "identity_file": self.identity_file,
            "known_hosts_file": self.known_hosts_file, "workdir": str(workdir), "threads": 1,
        }
        data.update(fields)
        return data


def free_port() -> int:
    """A port nobody listens on right now (the kernel's pick; another process could still take it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def generate_key(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL)
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def sshd_binary() -> str:
    path = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(path, os.X_OK):
        pytest.fail(f"OpenSSH server not found (looked for sshd on PATH and /usr/sbin/sshd); install it: "
                    f"{INSTALL_HINT}", pytrace=False)
    return path


def _config_lines(directory: Path, port: int) -> list[str]:
    return [
        "ListenAddress 127.0.0.1", f"Port {port}", f'HostKey "{directory / "host_key"}"',
        f'AuthorizedKeysFile "{directory / "authorized_keys"}"', f'PidFile "{directory / "sshd.pid"}"',
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "AuthenticationMethods publickey", "PermitRootLogin prohibit-password", "StrictModes no",
        "UsePAM no", "PrintMotd no", "PrintLastLog no", "MaxStartups 100", "LogLevel VERBOSE",
        # The post-quantum default key exchange costs ~0.4 s per connection on a busy CI machine and
        # every copy and command is a new connection; the tests are about host keys, not the kex.
        "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
        # bash runs ~/.bashrc for commands from sshd unless it thinks it is nested; on a developer's
        # machine that is pyenv/conda start-up, another ~0.4 s per connection. Tests name interpreters
        # by absolute path, so they do not need it.
        "SetEnv SHLVL=1",
    ]


def write_config(sshd: str, directory: Path, port: int) -> Path:
    """sshd_config for one test server. OpenSSH ≥ 9.8 penalises sources whose connections fail or
    crash; the tests do both on purpose, so that is turned off where the option exists."""
    config = directory / "sshd_config"
    lines = _config_lines(directory, port)
    config.write_text("\n".join(lines + ["PerSourcePenalties no"]) + "\n")
    check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        config.write_text("\n".join(lines) + "\n")
    return config


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {seconds} s: {log.read_text()[-2000:]}")


def start_sshd(directory: Path) -> tuple[Sshd, subprocess.Popen]:
    """Keys, config and a foreground sshd in `directory`; the caller stops the returned process."""
    sshd = sshd_binary()
    with contextlib.suppress(PermissionError):  # not root: sshd's log will say if it needs the directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    host_key = generate_key(directory / "host_key", "edgekit-test-host")
    user_key = generate_key(directory / "user_key", "edgekit-test-user")
    (directory / "authorized_keys").write_text(user_key + "\n")
    port = free_port()
    config = write_config(sshd, directory, port)
    log = directory / "sshd.log"
    proc = subprocess.Popen([sshd, "-D", "-f", str(config), "-E", str(log)], start_new_session=True)
    try:
        wait_for_port(port, proc, log)
    except BaseException:
        stop_sshd(proc)
        raise
    server = Sshd("127.0.0.1", port, getpass.getuser(), str(directory / "user_key"),
                  str(directory / "known_hosts"), host_key)
    Path(server.known_hosts_file).write_text(server.known_hosts_line())
    return server, proc


def stop_sshd(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sshd_from_env() -> Sshd | None:
    """The server `.ci/start-sshd` advertised, or None when no EDGEKIT_TEST_SSHD_PORT is set."""
    if not os.environ.get(ENV_PREFIX + "PORT"):
        return None
    missing = [ENV_PREFIX + key for key in ENV_KEYS if not os.environ.get(ENV_PREFIX + key)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set although {ENV_PREFIX}PORT is; re-run .ci/start-sshd",
                    pytrace=False)
    env = {key: os.environ[ENV_PREFIX + key] for key in ENV_KEYS}
    line = Path(env["KNOWN_HOSTS"]).read_text().split()
    return Sshd(env["HOST"], int(env["PORT"]), env["USER"], env["IDENTITY"], env["KNOWN_HOSTS"],
                " ".join(line[1:3]))


def serve(tmp_path_factory) -> Iterator[Sshd]:
    """Body of a session fixture: reuse the advertised server or run one for the session."""
    advertised = sshd_from_env()
    if advertised:
        yield advertised
        return
    server, proc = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(proc)


def session_pid_of(pid: int) -> int | None:
    """The sshd process serving the session that `pid` runs in (its nearest sshd ancestor)."""
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name.startswith("sshd"):
            return pid
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    return None
