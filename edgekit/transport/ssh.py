"""Commands and file copies on a device through the system OpenSSH client.

Driving `ssh` itself (not a Python SSH library) means the user's ~/.ssh/config, agent and known_hosts
apply exactly as they do in a terminal. Host keys are always checked: an unknown key is refused unless the
caller explicitly accepts new keys, and a changed key always aborts before anything runs or is copied.
Every OpenSSH failure is turned into one line that names host:port and what to do about it.

Connections are shared (OpenSSH ControlMaster): the first command to a device starts a master connection
that later commands and copies reuse for CONTROL_PERSIST seconds, so a deploy's ten steps or a fleet
operation over a hundred devices pays for one handshake per device, not one per step. The control sockets
live in a private 0700 folder (`/tmp/edgekit-ssh-<uid>`, short because a socket path is limited to ~104
bytes). A socket's name covers everything that decides whom the master talks to and trusts (host, port,
user, key, options, and the known_hosts file's *content*), so a command with a changed known_hosts entry
never rides on a master that was verified under the old one. A profile may turn sharing off with
`ssh_options: {ControlMaster: "no"}` (profile options come first, and the first value wins in OpenSSH).
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import re
import secrets
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError, TooLarge

SSH_EXIT_ERROR = 255  # OpenSSH's own failures (or a remote command that exited 255 itself)
REMOTE_TIMEOUT_EXIT = 124  # coreutils `timeout` when the device-side deadline fired
# The device-side deadline fires this long after the local one, so the local error is the one users see
# while a hung benchmark still stops burning the device's CPU once we have given up on it.
REMOTE_GRACE_SECONDS = 1

_UNREACHABLE = (
    "Connection refused", "Connection timed out", "No route to host", "Network is unreachable",
    "Could not resolve hostname", "Name or service not known", "Temporary failure in name resolution",
    "timed out during banner exchange",
)
_SHA256 = re.compile(r"^([0-9a-f]{64})\b", re.MULTILINE)
CONTROL_PERSIST = 60  # seconds an idle master connection stays up
_HASH_PY = "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"


@dataclass(frozen=True)
class SshResult:
    returncode: int
    stdout: bytes
    stderr: str


def remote_quote(path: str) -> str:
    """Quote a device path for the remote shell but keep a leading `~/` expandable."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def part_name(name: str) -> str:
    """A temporary name beside `name` that no other writer uses: two `tune --join` workers (or two
    hosts) putting the same content-named model into one work directory must not rename or delete
    each other's half-written copy."""
    return f"{name}.{os.getpid()}-{secrets.token_hex(4)}.part"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe_exit(returncode: int) -> str:
    """`exited 139 (SIGSEGV)`: a shell reports a process killed by a signal as 128 + its number."""
    if 128 < returncode < 128 + 65:
        try:
            return f"exited {returncode} ({signal.Signals(returncode - 128).name})"
        except ValueError:
            pass
    return f"exited {returncode}"


def _quoted_path_option(value: str) -> str:
    """ssh splits UserKnownHostsFile on spaces (it takes several files): quote a path that has any."""
    return f'"{value}"' if any(ch.isspace() for ch in value) else value


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_process(argv: list[str], *, timeout: float, stdin=None, stdout=None,
                cwd: str | None = None) -> tuple[int, bytes, str] | None:
    """Run `argv` in its own process group; None if it outlived `timeout` (the whole group is killed).

    `stdin`/`stdout` may be open files so that models stream instead of sitting in memory.
    """
    proc = subprocess.Popen(
        argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=cwd, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, out or b"", err.decode("utf-8", "replace")


def control_dir() -> Path | None:
    """The private folder for control sockets, or None (no sharing) when it is not safely ours."""
    # Not under EDGEKIT_HOME: a socket path is limited to ~104 bytes and homes can be deep.
    directory = Path(f"/tmp/edgekit-ssh-{os.getuid()}")  # noqa: S108
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
    except OSError:
        return None
    # Someone else's folder (or a symlink planted in /tmp) could hand us their master connection.
    if not directory.is_dir() or directory.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return directory


def _file_digest(path: str | None) -> str:
    try:
        return hashlib.sha256(Path(os.path.expanduser(path or "~/.ssh/known_hosts")).read_bytes()).hexdigest()
    except OSError:
        return "-"


@dataclass(frozen=True)
class SshClient:
    """One device reached through `ssh`; every call is a fresh connection with the same options."""

    host: str
    port: int | None = None  # None: ~/.ssh/config decides, else 22
    user: str | None = None
    identity_file: str | None = None
    known_hosts_file: str | None = None
    accept_new_host_key: bool = False
    options: tuple[tuple[str, str], ...] = ()
    connect_timeout: int = 10
    ssh_binary: str = "ssh"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port or 22}"

    def ssh_argv(self) -> list[str]:
        """ssh and its options up to the destination; the first value of an option wins in OpenSSH."""
        strict = "accept-new" if self.accept_new_host_key else "yes"
        argv = [
            self.ssh_binary, "-T", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={strict}",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
        ]
        if self.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={_quoted_path_option(self.known_hosts_file)}"]
        if self.identity_file:
            argv += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        for key, value in self.options:
            argv += ["-o", f"{key}={value}"]  # verbatim: ProxyCommand and friends take the whole line
        argv += self._sharing_options()
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return argv + ["--", self.host]

    def _sharing_options(self) -> list[str]:
        directory = control_dir()
        if directory is None:
            return []
        identity = repr((self.ssh_binary, self.host, self.port, self.user, self.identity_file, self.known_hosts_file,
                         self.accept_new_host_key, self.options, _file_digest(self.known_hosts_file)))
        name = hashlib.sha256(identity.encode()).hexdigest()[:24]
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={directory / name}",
                "-o", f"ControlPersist={CONTROL_PERSIST}"]

    def run(self, command: str, *, timeout: float, what: str | None = None, check: bool = True,
            stdin=None, stdout=None) -> SshResult:
        """Run a shell command on the device; `what` names it in errors (defaults to the command).

        Raises EdgekitError on any SSH failure, on timeout and, with `check`, on a non-zero exit.
        """
        what = what or command
        argv = self.ssh_argv() + [self._with_deadline(command, timeout)]
        try:
            outcome = run_process(argv, timeout=timeout, stdin=stdin, stdout=stdout)
        except FileNotFoundError:
            raise EdgekitError(f"`{self.ssh_binary}` not found; install the OpenSSH client "
                               "(e.g. apt-get install openssh-client)") from None
        if outcome is None or outcome[0] == REMOTE_TIMEOUT_EXIT:
            raise EdgekitError(
                f"{self.address}: `{what}` did not finish within {timeout:g} s and was stopped; "
                "check the device is not overloaded or raise the timeout"
            )
        returncode, out, err = outcome
        if returncode == SSH_EXIT_ERROR:
            raise self._ssh_failure(err, what)
        if check and returncode != 0:
            raise EdgekitError(
                f"{self.address}: `{what}` {describe_exit(returncode)}: {last_line(err) or 'no error output'}"
            )
        return SshResult(returncode, out, err)

    def put(self, local_path: Path, remote_path: str, *, timeout: float = 300, python: str = "python3") -> str:
        """Copy a file to the device (atomically: a `.part` file renamed) and return its sha256 there."""
        quoted, part = remote_quote(remote_path), remote_quote(part_name(remote_path))
        parent = posixpath.dirname(remote_path) or "."
        command = (
            f"mkdir -p -- {remote_quote(parent)} && cat > {part} && mv -f -- {part} {quoted} && "
            f"{{ sha256sum -- {quoted} 2>/dev/null || {remote_quote(python)} -c {shlex.quote(_HASH_PY)} {quoted}; }}"
        )
        with open(local_path, "rb") as source:
            result = self.run(command, timeout=timeout, what=f"copy {Path(local_path).name} to {remote_path}",
                              stdin=source)
        digest = _SHA256.search(result.stdout.decode("ascii", "replace"))
        if not digest:
            raise EdgekitError(f"{self.address}: could not read the sha256 of {remote_path} on the device")
        return digest.group(1)

    def get(self, remote_path: str, local_path: Path, *, timeout: float = 300, max_bytes: int | None = None) -> Path:
        """Copy a file from the device; `local_path` only appears once the copy is complete. With
        `max_bytes` the device sends at most one byte more (`head -c`), so a huge or endless file (a
        device node) cannot fill this disk: it is refused instead."""
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        part = local_path.with_name(part_name(local_path.name))
        reader = "cat" if max_bytes is None else f"head -c {int(max_bytes) + 1}"
        try:
            with open(part, "wb") as sink:
                self.run(f"{reader} -- {remote_quote(remote_path)}", timeout=timeout,
                         what=f"copy {remote_path} from the device", stdout=sink)
            if max_bytes is not None and part.stat().st_size > max_bytes:
                raise TooLarge(f"{self.host}: {remote_path} is over the {max_bytes / 2**20:.0f} MB limit; "
                               "nothing fetched")
            os.replace(part, local_path)
        finally:
            part.unlink(missing_ok=True)
        return local_path

    @staticmethod
    def _with_deadline(command: str, timeout: float) -> str:
        """Wrap `command` so the device kills it too: a dropped ssh does not stop a remote process.

        The wrapper shell does not `exec`, so a command killed by a signal shows up as exit 128+N
        instead of ssh's ambiguous 255. Devices without coreutils `timeout` run the command as is.
        """
        seconds = math.ceil(timeout) + REMOTE_GRACE_SECONDS
        inner = shlex.quote(command)
        return (
            f"if command -v timeout >/dev/null 2>&1; then timeout -k 1 {seconds} sh -c {inner}; "
            f"else sh -c {inner}; fi"
        )

    def _endpoint(self) -> tuple[str, int]:
        """The host name and port ssh really uses once ~/.ssh/config is applied (`ssh -G`)."""
        argv = [arg for arg in self.ssh_argv() if arg != "-T"]
        outcome = run_process(argv[:-2] + ["-G", "--", self.host], timeout=5)
        settings = {}
        if outcome and outcome[0] == 0:
            for line in outcome[1].decode("utf-8", "replace").splitlines():
                key, _, value = line.partition(" ")
                settings[key] = value
        port = int(settings.get("port", self.port or 22))
        return settings.get("hostname", self.host), port

    def _ssh_failure(self, stderr: str, what: str) -> EdgekitError:
        host, port = self._endpoint()
        address = f"{host}:{port}"
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have requested" in stderr:
            entry = host if port == 22 else f"[{host}]:{port}"
            file_arg = f" -f {shlex.quote(self.known_hosts_file)}" if self.known_hosts_file else ""
            return EdgekitError(
                f"{address}: the device's host key has CHANGED since it was last trusted; nothing was run "
                f"or copied. If the device was reinstalled, check its key and run "
                f"`ssh-keygen{file_arg} -R '{entry}'`; otherwise someone may be intercepting the connection"
            )
        if "Host key verification failed" in stderr or "host key is known" in stderr:
            option = f" -o UserKnownHostsFile={shlex.quote(self.known_hosts_file)}" if self.known_hosts_file else ""
            return EdgekitError(
                f"{address}: the device's host key is not in known_hosts; verify it by connecting once with "
                f"`ssh{option} -p {port} {host}`, or pass --accept-new-host-key to trust it on first contact"
            )
        if "Bad configuration option" in stderr or "command-line line" in stderr:
            return EdgekitError(
                f"{address}: ssh rejected its configuration ({last_line(stderr)}); check ssh_options in the "
                "device profile and ~/.ssh/config"
            )
        if any(marker in stderr for marker in _UNREACHABLE):
            return EdgekitError(
                f"{address}: cannot connect ({last_line(stderr).split(': ')[-1]}); check the device is on, "
                "the host name and port in its profile, and that sshd runs on it"
            )
        if "Permission denied (" in stderr or "Too many authentication failures" in stderr:
            login = f"login as {self.user}" if self.user else "login"
            return EdgekitError(
                f"{address}: {login} refused; install your public key on the device (`ssh-copy-id`), "
                "load it into ssh-agent, or set user/identity_file in the device profile"
            )
        return EdgekitError(
            f"{address}: the connection was lost during `{what}` "
            f"({last_line(stderr) or 'ssh exited 255 without a message; the command may have exited 255 itself'})"
        )
