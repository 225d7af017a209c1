"""SSH and local targets against a real sshd on 127.0.0.1: copies, sha256 checks, host keys, failures."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sshd_fixture
import yaml

from edgekit.deploy import deploy, doctor
from edgekit.devices import RUNNER_NAME, load_profile, parse_profile, runner_path
from edgekit.errors import EdgekitError
from edgekit.transport.ssh import SshClient
from edgekit.transport.targets import LocalTarget, SshTarget, make_target

# Speaks the runner's protocol (subcommand, arguments, --json) without needing a model or numpy.
STAND_IN_RUNNER = '''\
import json, os, sys
args = [a for a in sys.argv[1:] if a != "--json"]
command = args[0]
if command == "echo":
    print("loading", file=sys.stderr)
    print(json.dumps({"args": args, "json": "--json" in sys.argv, "cwd": os.getcwd()}))
elif command == "write":
    with open(args[1], "w") as handle:
        handle.write(args[2])
    print(json.dumps({"wrote": args[1]}))
elif command == "fail":
    print("warming up\\nRuntimeError: model file is damaged", file=sys.stderr)
    sys.exit(2)
elif command == "noisy":
    print("edgekit_runner: error: --images x.npz: no readable images", file=sys.stderr)
    print("I0000 00:00 cpu_feature_guard.cc:210] TensorFlow log noise after the error", file=sys.stderr)
    sys.exit(1)
elif command == "import":
    __import__(args[1])
elif command == "text":
    print("no json here")
elif command == "_probe":  # deploy loads the model once with the device's runtime
    print(json.dumps({"name": "stand-in", "version": "0"}))
'''


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    yield from sshd_fixture.serve(tmp_path_factory)


@pytest.fixture
def stand_in(tmp_path) -> Path:
    path = tmp_path / "stand_in_runner.py"
    path.write_text(STAND_IN_RUNNER)
    return path


def _manifest(variant: Path) -> None:
    """The variant manifest `edgekit compress` writes, describing the model.tflite already in `variant`."""
    from edgekit import manifests

    contract = manifests.ModelContract(file="model.tflite", input_size=(32, 32, 3), labels=("red", "green"))
    manifests.write(variant, manifests.VariantManifest(name=variant.name, model=contract), ["model.tflite"])


def ssh_profile(sshd, workdir: Path, **fields):
    fields.setdefault("python", sys.executable)
    return parse_profile(workdir.parent / "loopback.yaml", sshd.profile(workdir, **fields))


def client(sshd, **changes) -> SshClient:
    fields = dict(host=sshd.host, port=sshd.port, user=sshd.user, identity_file=sshd.identity_file,
                  known_hosts_file=sshd.known_hosts_file)
    fields.update(changes)
    return SshClient(**fields)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_good_run_prepares_copies_runs_and_fetches(sshd, tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    devices = tmp_path / "home" / "devices"
    devices.mkdir(parents=True)
    workdir = tmp_path / "device" / "edgekit"
    (devices / "loopback.yaml").write_text(yaml.safe_dump(sshd.profile(workdir, python=sys.executable)))
    target = make_target(load_profile("loopback"))
    assert isinstance(target, SshTarget)

    assert target.prepare() == str(workdir)
    data = tmp_path / "images.npz"
    data.write_bytes(os.urandom(200_000))
    assert target.put(stand_in, RUNNER_NAME) == hashlib.sha256(stand_in.read_bytes()).hexdigest()
    assert target.put(data, "inputs/images.npz") == hashlib.sha256(data.read_bytes()).hexdigest()
    assert (workdir / "inputs" / "images.npz").read_bytes() == data.read_bytes()

    report = target.run_runner(["echo", "with space", "~/not-expanded"], timeout=20)
    assert report == {"args": ["echo", "with space", "~/not-expanded"], "json": True, "cwd": str(workdir)}

    target.run_runner(["write", "feedback.db", "rows"], timeout=20)
    fetched = target.fetch("feedback.db", tmp_path / "back" / "feedback.db")
    assert fetched.read_text() == "rows"
    assert not list((tmp_path / "back").glob("*.part"))


def test_deploy_puts_runner_model_manifest_and_labels_with_matching_sha256(sshd, tmp_path, stand_in):
    variant = tmp_path / "variant"
    variant.mkdir()
    model = variant / "model.tflite"
    model.write_bytes(b"TFL3" + os.urandom(5000))
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    _manifest(variant)
    (variant / "labels.txt").write_text("red\ngreen\n")
    workdir = tmp_path / "device"

    result = deploy(ssh_profile(sshd, workdir), model, runner=stand_in)

    assert result["model_sha256"] == digest
    assert result["model"] == str(workdir / "models" / digest[:12] / "model.tflite")
    assert set(result["files"]) == {RUNNER_NAME, f"models/{digest[:12]}/model.tflite",
                                    f"models/{digest[:12]}/manifest.json", f"models/{digest[:12]}/labels.txt"}
    for name, record in result["files"].items():
        assert hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest() == record["sha256"], name


def test_deploy_refuses_a_model_that_no_longer_matches_its_manifest(sshd, tmp_path, stand_in):
    model = tmp_path / "variant" / "model.tflite"
    model.parent.mkdir()
    model.write_bytes(b"TFL3 as compress wrote it")
    _manifest(model.parent)
    model.write_bytes(b"TFL3 changed after compress")
    with pytest.raises(EdgekitError, match="does not match"):
        deploy(ssh_profile(sshd, tmp_path / "device"), model, runner=stand_in)
    assert not (tmp_path / "device").exists()


def test_put_rejects_a_copy_whose_sha256_differs_on_the_device(sshd, tmp_path, stand_in, monkeypatch):
    target = SshTarget(ssh_profile(sshd, tmp_path / "device"))
    monkeypatch.setattr(SshClient, "put", lambda *args, **kwargs: "f" * 64)
    with pytest.raises(EdgekitError, match=f"{RUNNER_NAME} has sha256 ffffffffffff… on the device"):
        target.put(stand_in, RUNNER_NAME)


def test_unknown_host_key_is_refused_without_accept_new(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(EdgekitError) as error:
        client(sshd, known_hosts_file=str(empty)).run("true", timeout=10)
    assert f"127.0.0.1:{sshd.port}: the device's host key is not in known_hosts" in one_line(error)
    assert "--accept-new-host-key" in str(error.value)


def test_unknown_host_key_is_trusted_and_recorded_with_accept_new(sshd, tmp_path):
    known_hosts = tmp_path / "my keys" / "known_hosts"  # ssh splits this option on spaces unless quoted
    known_hosts.parent.mkdir()
    known_hosts.write_text("")
    result = client(sshd, known_hosts_file=str(known_hosts), accept_new_host_key=True).run("echo ok", timeout=10)
    assert result.stdout == b"ok\n"
    assert sshd.host_key in known_hosts.read_text()


@pytest.mark.parametrize("accept_new", [False, True])
def test_changed_host_key_aborts_before_anything_is_copied(sshd, tmp_path, stand_in, accept_new):
    other_key = sshd_fixture.generate_key(tmp_path / "impostor", "impostor")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line(other_key))
    workdir = tmp_path / "device"
    target = SshTarget(ssh_profile(sshd, workdir, known_hosts_file=str(known_hosts)),
                       accept_new_host_key=accept_new)
    with pytest.raises(EdgekitError) as error:
        target.put(stand_in, RUNNER_NAME)
    message = one_line(error)
    assert f"127.0.0.1:{sshd.port}: the device's host key has CHANGED" in message
    assert f"ssh-keygen -f {known_hosts} -R '[127.0.0.1]:{sshd.port}'" in message
    assert not workdir.exists()
    assert known_hosts.read_text() == sshd.known_hosts_line(other_key)


def test_unreachable_port_names_host_and_port(tmp_path):
    port = sshd_fixture.free_port()
    started = time.monotonic()
    with pytest.raises(EdgekitError) as error:
        SshClient("127.0.0.1", port=port, known_hosts_file=str(tmp_path / "none")).run("true", timeout=10)
    assert one_line(error).startswith(f"127.0.0.1:{port}: cannot connect (Connection refused)")
    assert time.monotonic() - started < 5


def test_non_zero_exit_reports_the_last_stderr_line(sshd):
    with pytest.raises(EdgekitError) as error:
        client(sshd).run("echo first >&2; echo 'the real reason' >&2; exit 3", timeout=10, what="probe")
    assert one_line(error) == f"127.0.0.1:{sshd.port}: `probe` exited 3: the real reason"


def test_remote_crash_is_reported_as_a_signal_not_a_lost_connection(sshd):
    with pytest.raises(EdgekitError, match=r"exited 139 \(SIGSEGV\)"):
        client(sshd).run("kill -SEGV $$", timeout=10)


def wait_for_pid(pidfile: Path, seconds: float = 10) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{pidfile} never appeared")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):  # it exited between the two looks
        return False


def test_hanging_command_times_out_and_is_stopped_on_the_device(sshd, tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(EdgekitError) as error:
        client(sshd).run(f"echo $$ > {pidfile}; exec sleep 60", timeout=2, what="sleep 60")
    elapsed = time.monotonic() - started
    assert one_line(error).startswith(f"127.0.0.1:{sshd.port}: `sleep 60` did not finish within 2 s")
    assert elapsed < 4
    pid = wait_for_pid(pidfile)
    deadline = time.monotonic() + 8
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), "the device-side deadline did not stop the hung command"


def test_connection_dropped_mid_command_is_an_error(sshd, tmp_path):
    """The sshd process above the command is killed. The client has a connection of its own (no shared
    master): killing the process that serves a shared master would drop every other test's session on it,
    which, with tests running in parallel, failed an unrelated test now and then."""
    pidfile = tmp_path / "pid"
    killed = []

    def drop_the_session():
        pid = wait_for_pid(pidfile)
        session = sshd_fixture.session_pid_of(pid)
        if session:
            os.kill(session, signal.SIGKILL)
            killed.append((session, pid))

    killer = threading.Thread(target=drop_the_session)
    killer.start()
    try:
        with pytest.raises(EdgekitError) as error:
            client(sshd, options=(("ControlMaster", "no"),)).run(f"echo $$ > {pidfile}; exec sleep 20", timeout=15,
                                                                 what="bench")
    finally:
        killer.join()
        for _, orphan in killed:
            if alive(orphan):
                os.kill(orphan, signal.SIGKILL)
    assert killed, "no sshd session process found above the remote command"
    assert one_line(error).startswith(f"127.0.0.1:{sshd.port}: the connection was lost during `bench`")


def test_runner_failure_shows_its_last_error_line(sshd, tmp_path, stand_in):
    target = SshTarget(ssh_profile(sshd, tmp_path / "device"))
    target.put(stand_in, RUNNER_NAME)
    with pytest.raises(EdgekitError) as error:
        target.run_runner(["fail"], timeout=20)
    assert one_line(error) == "loopback: `edgekit_runner.py fail` exited 2: RuntimeError: model file is damaged"
    with pytest.raises(EdgekitError, match=r"`edgekit_runner.py noisy` exited 1: --images x.npz: no readable images$"):
        target.run_runner(["noisy"], timeout=20)
    with pytest.raises(EdgekitError, match="printed no JSON report .last output: no json here"):
        target.run_runner(["text"], timeout=20)
    with pytest.raises(EdgekitError, match="does-not-exist"):
        target.fetch("does-not-exist.db", tmp_path / "out.db")
    assert not (tmp_path / "out.db").exists()


def bare_python(tmp_path: Path) -> Path:
    """A Python that sees only the standard library: no numpy, LiteRT, tflite_runtime or TensorFlow."""
    wrapper = tmp_path / "bare-python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_device_missing_a_python_module_gets_the_install_line(sshd, tmp_path, stand_in):
    target = SshTarget(ssh_profile(sshd, tmp_path / "device", python=str(bare_python(tmp_path))))
    target.put(stand_in, RUNNER_NAME)
    with pytest.raises(EdgekitError) as error:
        target.run_runner(["import", "ai_edge_litert"], timeout=20)
    assert one_line(error).endswith(
        "No module named 'ai_edge_litert'; install it on the device: "
        f"{tmp_path / 'bare-python'} -m pip install ai-edge-litert"
    )


def test_device_without_python_says_which_interpreter_is_missing(sshd, tmp_path, stand_in):
    target = SshTarget(ssh_profile(sshd, tmp_path / "device", python="python3-not-installed"))
    target.prepare()
    target.put(stand_in, RUNNER_NAME)  # hashing falls back to sha256sum, so this still works
    with pytest.raises(EdgekitError, match="`python3-not-installed` not found on the device"):
        target.run_runner(["echo"], timeout=20)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A Python with an empty site-packages: no numpy, Pillow, LiteRT, tflite_runtime or TensorFlow,
    like a freshly installed Raspberry Pi OS (the runner's import probes use the same interpreter)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv / "bin" / "python"


def test_doctor_on_a_device_without_an_interpreter_says_what_to_install(sshd, tmp_path, bare_venv):
    profile = ssh_profile(sshd, tmp_path / "device", python=str(bare_venv))
    report = doctor(profile)
    assert report["ok"] is False
    assert report["selected_runtime"] is None
    assert not any(runtime["available"] for runtime in report["runtimes"])
    pip = f"{bare_venv} -m pip install"  # the device interpreter's own pip: works in a venv under PEP 668
    assert f"{pip} ai-edge-litert" in report["missing"]  # one pasteable command per line (issue 23)
    assert f"{pip} numpy" in report["missing"]
    assert report["error"].startswith("loopback: `edgekit_runner.py doctor` exited 1: this device cannot run")
    assert report["device"]["address"] == f"127.0.0.1:{sshd.port}"
    assert report["executable"] == str(bare_venv)


def test_bench_on_a_device_without_numpy_is_a_one_line_error(sshd, tmp_path, bare_venv):
    target = SshTarget(ssh_profile(sshd, tmp_path / "device", python=str(bare_venv)))
    target.put(runner_path(), RUNNER_NAME)
    with pytest.raises(EdgekitError) as error:
        target.run_runner(["bench", "model.tflite", "--images", "x.npz"], timeout=30)
    message = one_line(error)
    assert message.startswith("loopback: `edgekit_runner.py bench` exited 1: numpy is not installed")
    assert message.endswith("pip install numpy")
    report = target.run_runner(["bench", "model.tflite", "--images", "x.npz"], timeout=30, check=False)
    assert report["exit_code"] == 1 and "numpy is not installed" in report["error"]
    assert report["device"]["machine"]


def test_local_target_runs_the_same_protocol_without_ssh(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    target = make_target(load_profile("desktop"))
    assert isinstance(target, LocalTarget)
    workdir = Path(target.prepare())
    assert workdir == (tmp_path / "home" / "targets" / "desktop").resolve()
    target.put(stand_in, RUNNER_NAME)
    assert target.run_runner(["echo", "a"], timeout=20) == {"args": ["echo", "a"], "json": True,
                                                            "cwd": str(workdir)}
    target.run_runner(["write", "log.db", "x"], timeout=20)
    assert target.fetch("log.db", tmp_path / "log.db").read_text() == "x"
    with pytest.raises(EdgekitError, match="exited 2: RuntimeError: model file is damaged"):
        target.run_runner(["fail"], timeout=20)


def test_deploy_to_the_local_desktop_uses_the_same_layout(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3" + os.urandom(100))
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    result = deploy(load_profile("desktop"), model, runner=stand_in)
    workdir = (tmp_path / "home" / "targets" / "desktop").resolve()
    assert result["model"] == str(workdir / "models" / digest[:12] / "model.tflite")
    assert Path(result["model"]).read_bytes() == model.read_bytes()
    assert set(result["files"]) == {RUNNER_NAME, f"models/{digest[:12]}/model.tflite"}


def test_local_target_stops_a_hung_runner(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    target = LocalTarget(load_profile("desktop"))
    target.prepare()
    (Path(target.workdir) / RUNNER_NAME).write_text("import time\ntime.sleep(60)\n")
    started = time.monotonic()
    with pytest.raises(EdgekitError, match="did not finish within 1 s"):
        target.run_runner(["bench"], timeout=1)
    assert time.monotonic() - started < 3


def test_ssh_options_keep_host_key_checking_on_and_come_first(sshd):
    argv = client(sshd, options=(("StrictHostKeyChecking", "no"),)).ssh_argv()
    assert argv.index("StrictHostKeyChecking=yes") < argv.index("StrictHostKeyChecking=no")
    assert "BatchMode=yes" in argv and argv[-2:] == ["--", "127.0.0.1"]
    assert "-p" not in SshClient("pi.local").ssh_argv()



@pytest.mark.slow
def test_deploy_then_bench_a_real_model_over_ssh(sshd, tmp_path):
    import numpy as np
    import runner_models

    model = runner_models.write_variant(tmp_path / "variant", runner_models.colour_tflite())
    images, _ = runner_models.color_images(6)
    np.savez(tmp_path / "images.npz", x=images)
    profile = ssh_profile(sshd, tmp_path / "device")

    deployed = deploy(profile, model)
    target = SshTarget(profile)
    target.put(tmp_path / "images.npz", "images.npz")
    report = target.run_runner(["bench", deployed["model"], "--images", "images.npz", "--runs", "5",
                                "--warmup", "1", "--min-seconds", "0", "--threads", "1"], timeout=120)

    assert report["model_sha256"] == deployed["model_sha256"]
    assert report["latency_ms"]["n"] >= 5 and report["latency_ms"]["p50"] > 0
    assert report["outputs"] and all(output["argmax"] == output["index"] % 3 for output in report["outputs"])


def test_two_workers_copying_the_same_model_to_one_local_target_both_succeed(tmp_path, monkeypatch):
    """Two `tune --join` workers on one machine put the same content-named model into one work
    directory at once; each copy goes through its own temporary name, so neither finds its `.part`
    file renamed away by the other (CI caught this as 'cannot write in …/models')."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    model = tmp_path / "model.tflite"
    model.write_bytes(os.urandom(1 << 20))
    targets = [LocalTarget(load_profile("desktop")) for _ in range(4)]
    for target in targets:
        target.prepare()

    def put_many(target):
        for _ in range(25):
            target.put(model, "models/abc/model.tflite")

    with ThreadPoolExecutor(len(targets)) as pool:
        for future in [pool.submit(put_many, target) for target in targets]:
            future.result()
    folder = Path(targets[0].workdir) / "models" / "abc"
    assert [p.name for p in folder.iterdir()] == ["model.tflite"]
    assert (folder / "model.tflite").read_bytes() == model.read_bytes()
