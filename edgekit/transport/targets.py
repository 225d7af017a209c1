"""Where the on-device runner runs: this machine or a device over SSH, behind one small interface.

Benchmarks, deployments and doctor reports do the same four things everywhere (make a work directory,
copy files in and check their sha256 there, run the runner and read its JSON, copy files back), so
the local desktop is measured through exactly the code path a Raspberry Pi is.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import shlex
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from edgekit.artifacts import sha256_file
from edgekit.devices import RUNNER_NAME, DeviceProfile
from edgekit.errors import EdgekitError, TooLarge
from edgekit.transport.ssh import SshClient, describe_exit, last_line, part_name, remote_quote, run_process

# What `pip install` calls the modules the runner may fail to import.
_PIP_NAMES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime", "PIL": "pillow"}
_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
RUNNER_ERROR_PREFIX = "edgekit_runner: error: "


class Target(ABC):
    """A device's work directory plus a way to run the runner in it."""

    def __init__(self, profile: DeviceProfile):
        self.profile = profile
        self.workdir = profile.remote_workdir

    @property
    def name(self) -> str:
        return self.profile.name

    def path(self, remote_name: str) -> str:
        """Where a file named relative to the work directory lives on the device."""
        return posixpath.join(self.workdir, remote_name)

    @abstractmethod
    def prepare(self) -> str:
        """Create the work directory; returns its absolute path on the device."""

    @abstractmethod
    def put(self, local_path: Path, remote_name: str) -> str:
        """Copy a file into the work directory, check its sha256 on the device, return the sha256."""

    @abstractmethod
    def fetch(self, remote_name: str, local_path: Path, max_bytes: int | None = None) -> Path:
        """Copy a file from the work directory back to this machine; with `max_bytes`, a larger file (or
        an endless one, such as a device node) is refused after at most that many bytes."""

    @abstractmethod
    def run(self, argv: list[str], *, timeout: float, what: str) -> tuple[int, bytes, str]:
        """Run `argv` inside the work directory: (exit code, stdout, stderr). Raises only on timeouts
        and connection failures, so callers can read an error the program printed itself."""

    def remove(self, remote_name: str) -> None:
        """Delete a file from the work directory (nothing when it is not there)."""
        self.run(["rm", "-f", "--", remote_name], timeout=30, what=f"remove {remote_name}")

    def run_runner(self, args: list[str], timeout: float = 600, *, check: bool = True) -> dict:
        """Run `<python> edgekit_runner.py <args> --json` on the device and return the JSON it printed.

        A runner that fails prints one `edgekit_runner: error:` line and, for `bench` and `doctor`, still
        prints its JSON report. With `check=False` that report comes back with `error` set (doctor on a
        device that lacks an interpreter says what to install); otherwise the failure is raised.
        """
        args = [str(arg) for arg in args]
        argv = [self.profile.interpreter, RUNNER_NAME, *args] + ([] if "--json" in args else ["--json"])
        what = f"{RUNNER_NAME} {' '.join(args[:1])}".strip()
        returncode, out, err = self.run(argv, timeout=timeout, what=what)
        if returncode == 0:
            return self._parse_json(what, out, err)
        failure = self._runner_failure(what, returncode, out, err)
        report = _json_report(out)
        if check or report is None:
            raise failure
        report["error"] = str(failure)
        report["exit_code"] = returncode
        return report

    def _parse_json(self, what: str, out: bytes, err: str) -> dict:
        report = _json_report(out)
        if report is None:
            tail = last_line(out.decode("utf-8", "replace")) or last_line(err) or "no output"
            raise EdgekitError(f"{self.name}: `{what}` printed no JSON report (last output: {tail[:200]})")
        return report

    def _runner_failure(self, what: str, returncode: int, out: bytes, err: str) -> EdgekitError:
        python = self.profile.interpreter
        reported = (_json_report(out) or {}).get("error")
        detail = str(reported or _runner_error_line(err) or last_line(err) or "no error output")
        missing = _MISSING_MODULE.search(detail)
        if missing and "pip install" not in detail:
            module = missing.group(1).split(".")[0]
            detail += f"; install it on the device: {python} -m pip install {_PIP_NAMES.get(module, module)}"
        elif returncode == 127:
            where = f" or set `python:` in {self.profile.source}" if self.profile.source else ""
            detail = f"`{python}` not found on the device; install Python 3{where}"
        return EdgekitError(f"{self.name}: `{what}` {describe_exit(returncode)}: {detail}")


def _json_report(out: bytes) -> dict | None:
    """The JSON object a runner printed, even after stray lines (a chatty ~/.bashrc, library logs)."""
    text = out.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    for start in reversed([match.start() for match in re.finditer(r"^\{", text, re.MULTILINE)]):
        try:
            payload, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(payload, dict) and not text[end:].strip():
            return payload
    return None


def _runner_error_line(stderr: str) -> str | None:
    """The runner's own error line; TensorFlow may have logged more lines after it."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(RUNNER_ERROR_PREFIX):
            return line[len(RUNNER_ERROR_PREFIX):].strip()
    return None


class LocalTarget(Target):
    """This machine: files are copied into a local work directory and the runner is a child process."""

    def prepare(self) -> str:
        workdir = Path(self.workdir).expanduser()
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._disk_error(workdir, exc) from None
        self.workdir = str(workdir.resolve())
        return self.workdir

    def _disk_error(self, folder: Path, exc: OSError, workdir: bool = True) -> EdgekitError:
        """A read-only or full $EDGEKIT_HOME (where local work directories live) is one line naming the folder."""
        if exc.errno == errno.ENOSPC:
            fix = "free some space there"
        elif workdir:
            fix = (f"make it writable, set EDGEKIT_HOME to a writable folder, or set `workdir:` in "
                   f"{self.profile.source or 'the device profile'}")
        else:
            fix = "make it writable or choose another folder"
        return EdgekitError(f"{self.name}: cannot write in {folder} ({exc.strerror or exc}); {fix}")

    def _copy(self, source: Path, destination: Path, workdir: bool = True) -> None:
        """Copy through a `.part` file renamed into place; a failure or an interrupt leaves no `.part`."""
        part = destination.with_name(part_name(destination.name))
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, part)
            os.replace(part, destination)
        except OSError as exc:
            raise self._disk_error(destination.parent, exc, workdir) from None
        finally:
            part.unlink(missing_ok=True)

    def put(self, local_path: Path, remote_name: str) -> str:
        expected = sha256_file(local_path)
        destination = Path(self.path(remote_name)).expanduser()
        if not destination.exists() or not os.path.samefile(local_path, destination):
            self._copy(Path(local_path), destination)
        _check_digest(self.name, remote_name, expected, sha256_file(destination))
        return expected

    def fetch(self, remote_name: str, local_path: Path, max_bytes: int | None = None) -> Path:
        source = Path(self.path(remote_name)).expanduser()
        if not source.is_file():
            raise EdgekitError(f"{self.name}: {source} does not exist; nothing to fetch")
        if max_bytes is not None and source.stat().st_size > max_bytes:
            raise TooLarge(f"{self.name}: {source} is over the {max_bytes / 2**20:.0f} MB limit; nothing fetched")
        local_path = Path(local_path)
        if not local_path.exists() or not os.path.samefile(source, local_path):
            self._copy(source, local_path, workdir=False)
        return local_path

    def run(self, argv: list[str], *, timeout: float, what: str) -> tuple[int, bytes, str]:
        cwd = Path(self.workdir).expanduser()
        if not cwd.is_dir():
            raise EdgekitError(f"{self.name}: work directory {cwd} does not exist; prepare the target first")
        try:
            outcome = run_process([str(arg) for arg in argv], timeout=timeout, cwd=str(cwd))
        except FileNotFoundError:
            return 127, b"", f"{argv[0]}: not found"
        if outcome is None:
            raise EdgekitError(f"{self.name}: `{what}` did not finish within {timeout:g} s and was stopped")
        return outcome


class SshTarget(Target):
    """A device reached with the system `ssh`; the work directory lives on the device."""

    def __init__(self, profile: DeviceProfile, *, accept_new_host_key: bool = False,
                 known_hosts_file: str | None = None, connect_timeout: int = 10):
        super().__init__(profile)
        self.client = SshClient(
            host=profile.host, port=profile.port, user=profile.user, identity_file=profile.identity_file,
            known_hosts_file=known_hosts_file or profile.known_hosts_file,
            accept_new_host_key=accept_new_host_key, options=profile.ssh_options,
            connect_timeout=connect_timeout,
        )

    def prepare(self) -> str:
        quoted = remote_quote(self.workdir)
        result = self.client.run(f"mkdir -p -- {quoted} && cd -- {quoted} && pwd", timeout=30,
                                 what=f"create {self.workdir}")
        resolved = last_line(result.stdout.decode("utf-8", "replace"))
        self.workdir = resolved or self.workdir
        return self.workdir

    def put(self, local_path: Path, remote_name: str) -> str:
        expected = sha256_file(local_path)
        actual = self.client.put(Path(local_path), self.path(remote_name), python=self.profile.interpreter)
        _check_digest(self.name, remote_name, expected, actual)
        return expected

    def fetch(self, remote_name: str, local_path: Path, max_bytes: int | None = None) -> Path:
        return self.client.get(self.path(remote_name), Path(local_path), max_bytes=max_bytes)

    def run(self, argv: list[str], *, timeout: float, what: str) -> tuple[int, bytes, str]:
        # Only the interpreter (e.g. ~/venv/bin/python) is tilde-expanded; arguments arrive verbatim,
        # as they do in a local child process.
        program, *args = [str(arg) for arg in argv]
        command = f"cd -- {remote_quote(self.workdir)} && {remote_quote(program)} {shlex.join(args)}"
        result = self.client.run(command, timeout=timeout, what=what, check=False)
        return result.returncode, result.stdout, result.stderr


def _check_digest(device: str, name: str, expected: str, actual: str) -> None:
    if actual != expected:
        raise EdgekitError(
            f"{device}: {name} has sha256 {actual[:12]}… on the device but {expected[:12]}… here; "
            "the copy was damaged — run the command again"
        )


def make_target(profile: DeviceProfile, *, accept_new_host_key: bool = False,
                known_hosts_file: str | None = None) -> Target:
    if profile.is_remote:
        return SshTarget(profile, accept_new_host_key=accept_new_host_key, known_hosts_file=known_hosts_file)
    return LocalTarget(profile)
