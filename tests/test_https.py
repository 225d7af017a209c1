"""`serve` over TLS with a certificate made as `deploy --tls` makes it, reached by a real TLS client that pins
its SHA-256: the right fingerprint works, a wrong one is refused before the token is sent, and plain HTTP
beyond 127.0.0.1 is refused by the runner, by the client and by `deploy`'s option check."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit import manifests
from edgekit.certificate import ensure_certificate
from edgekit.devices import load_profile, parse_profile
from edgekit.errors import EdgekitError
from edgekit.service import ServiceSpec, unit_text
from edgekit.transport.https import fetch_json, fingerprint_of_pem, normalize_fingerprint
from edgekit.transport.targets import make_target

sys.path.insert(0, str(Path(__file__).parent))
import runner_models  # noqa: E402
import sshd_fixture  # noqa: E402

RUNNER = Path(__file__).resolve().parents[1] / "edgekit" / "resources" / "devices" / "edgekit_runner.py"
TOKEN = "tls-test-token-0123456789abcdef"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command line is needed")


def runner_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_RUNNER_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tls-model")
    runner_models.write_variant(directory, runner_models.colour_tflite())
    return directory / "model.tflite"


@pytest.fixture
def certificate(edgekit_home):
    """Made exactly as `deploy --service serve --tls` makes it, through the desktop target's transport."""
    target = make_target(load_profile("desktop"))
    target.prepare()
    return ensure_certificate(target)


@contextlib.contextmanager
def serving(model: Path, tmp_path: Path, *args, env=None):
    """A `serve` subprocess on a free port; yields (process, port, log path)."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(RUNNER), "serve", str(model), "--port", "0", "--no-log",
                                    *map(str, args)], stdout=subprocess.DEVNULL, stderr=log,
                                   env=env or runner_env(EDGEKIT_RUNNER_TOKEN=TOKEN))
    try:
        deadline = time.time() + 60
        while not (match := re.search(r"https?://\S+:(\d+)", log_path.read_text())):
            assert process.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.05)
        yield process, int(match.group(1)), log_path
    finally:
        process.kill()
        process.wait()


def test_the_certificate_is_made_once_with_a_private_key_only_its_owner_reads(certificate, edgekit_home):
    key, cert = Path(certificate.key), Path(certificate.cert)
    assert oct(key.stat().st_mode & 0o777) == "0o600" and oct(key.parent.stat().st_mode & 0o777) == "0o700"
    assert certificate.sha256 == fingerprint_of_pem(cert.read_text())
    assert not list(key.parent.glob("*.part"))
    again = ensure_certificate(make_target(load_profile("desktop")))
    assert again.sha256 == certificate.sha256  # a redeploy keeps what clients pinned


def test_serve_over_tls_answers_a_pinned_client_and_refuses_a_wrong_pin(model, tmp_path, certificate):
    with serving(model, tmp_path, "--host", "0.0.0.0", "--tls-cert", certificate.cert, "--tls-key",
                 certificate.key) as (_, port, log):
        assert f"https://0.0.0.0:{port}" in log.read_text()
        url = f"https://127.0.0.1:{port}"
        assert fetch_json(f"{url}/health", None, certificate.sha256, timeout=10) == {"status": "ok"}
        stats = fetch_json(f"{url}/stats", TOKEN, certificate.sha256.upper(), timeout=10)
        assert stats["requests"] >= 1
        with pytest.raises(EdgekitError, match="token was refused"):
            fetch_json(f"{url}/stats", "wrong-token-0123456789abcdef", certificate.sha256, timeout=10)
        wrong = "0" * 64
        with pytest.raises(EdgekitError) as refused:
            fetch_json(f"{url}/stats", TOKEN, wrong, timeout=10)
        message = str(refused.value)
        assert "\n" not in message and f"127.0.0.1:{port}" in message and "not the pinned" in message
        assert "nothing was sent" in message
        after = fetch_json(f"{url}/stats", TOKEN, certificate.sha256, timeout=10)
        assert after["requests"] == stats["requests"] + 2  # the 401 and this one: the wrong pin sent nothing
        # a plain-HTTP client gets no answer, and the server goes on serving
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/health")
            plain.getresponse().read()
        plain.close()
        raw = ssl.create_default_context()  # a client that checks CAs refuses the self-signed certificate
        with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(("127.0.0.1", port), 10) as sock:
            raw.wrap_socket(sock, server_hostname="127.0.0.1")
        assert fetch_json(f"{url}/health", None, certificate.sha256, timeout=10) == {"status": "ok"}
    assert "Traceback" not in log.read_text()


def test_serve_beyond_loopback_without_tls_is_refused_in_one_line(model):
    result = subprocess.run([sys.executable, str(RUNNER), "serve", str(model), "--host", "0.0.0.0", "--port", "0"],
                            capture_output=True, text=True, timeout=60, env=runner_env(EDGEKIT_RUNNER_TOKEN=TOKEN))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "--host 0.0.0.0" in lines[0] and "--tls-cert" in lines[0] and "in clear" in lines[0]


def test_tls_options_that_cannot_work_are_one_line(model, tmp_path, certificate):
    other = tmp_path / "other-key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out",
                    str(other)], check=True, capture_output=True)
    for args, needle in ((["--tls-cert", certificate.cert], "go together"),
                         (["--tls-cert", tmp_path / "nope.pem", "--tls-key", certificate.key], "nope.pem: no such"),
                         (["--tls-cert", certificate.cert, "--tls-key", other], "cannot load them")):
        result = subprocess.run([sys.executable, str(RUNNER), "serve", str(model), *map(str, args)],
                                capture_output=True, text=True, timeout=60, env=runner_env())
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], result.stderr


def test_loopback_plain_http_is_unchanged(model, tmp_path):
    with serving(model, tmp_path) as (_, port, _log):
        assert fetch_json(f"http://127.0.0.1:{port}/health", None, None, timeout=10) == {"status": "ok"}


def test_the_client_never_sends_a_token_in_clear_or_unpinned():
    with pytest.raises(EdgekitError, match="plain HTTP beyond this machine"):
        fetch_json("http://192.0.2.1:8080/stats", TOKEN, None, timeout=1)  # refused before connecting
    with pytest.raises(EdgekitError, match="needs its pinned certificate fingerprint"):
        fetch_json("https://192.0.2.1:8080/stats", TOKEN, None, timeout=1)
    with pytest.raises(EdgekitError, match="not a SHA-256"):
        normalize_fingerprint("abc")
    colons = ":".join(["AB"] * 32)
    assert normalize_fingerprint(colons) == "ab" * 32


def test_deploy_options_refuse_serving_beyond_loopback_without_tls():
    with pytest.raises(EdgekitError, match="add --tls"):
        ServiceSpec.parse("serve", "--host 0.0.0.0 --port 8080")
    with pytest.raises(EdgekitError, match="only `--service serve`"):
        ServiceSpec.parse("live", "/dev/video0", tls=True)
    with pytest.raises(EdgekitError, match="makes the certificate itself"):
        ServiceSpec.parse("serve", "--host 0.0.0.0 --tls-cert c.pem --tls-key k.pem", tls=True)
    assert ServiceSpec.parse("serve", "--host 0.0.0.0", tls=True).tls
    assert ServiceSpec.parse("serve", "--port 8081").args == ("--port", "8081")  # loopback: unchanged
    from typer.testing import CliRunner

    from edgekit.cli import app

    for args, needle in ((["--tls"], "--tls needs --service serve"),
                         (["--service", "serve", "--service-args", "--host 0.0.0.0"], "add --tls")):
        result = CliRunner().invoke(app, ["deploy", "m.tflite", "--device", "desktop", *args])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and needle in lines[0], result.output


def test_the_unit_serves_with_the_certificate_and_the_manifest_records_its_fingerprint(tmp_path, certificate):
    spec = ServiceSpec.parse("serve", "--host 0.0.0.0", tls=True)
    text = unit_text(spec, python="/usr/bin/python3", runner="/w/edgekit_runner.py", model="/w/m.tflite",
                     workdir="/w", user="pi", description="x", tls=certificate)
    assert f"--tls-cert {certificate.cert} --tls-key {certificate.key}" in text
    record = manifests.TlsRecord(sha256=certificate.sha256, cert=certificate.cert, key=certificate.key)
    written = manifests.write(tmp_path, manifests.DeploymentManifest(device="pi", tls=record), [])
    assert manifests.read(tmp_path, manifests.DeploymentManifest).tls == written.tls == record
    raw = json.loads((tmp_path / "manifest.json").read_text())
    del raw["tls"]  # a manifest written before TLS existed still reads
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    assert manifests.read(tmp_path, manifests.DeploymentManifest).tls is None


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from sshd_fixture.serve(tmp_path_factory)


def test_deploy_tls_over_ssh_makes_the_key_on_the_device_and_records_the_fingerprint(sshd, tmp_path, monkeypatch):
    import edgekit.deploy

    installed = {}

    def install(target, profile, spec, *, runner, model, model_sha256, tls=None):  # the host has no systemd
        installed.update(spec=spec, tls=tls)
        return {"unit": spec.unit_name, "state": "active"}

    monkeypatch.setattr(edgekit.deploy, "install_service", install)
    monkeypatch.setattr(edgekit.deploy, "check_service_possible", lambda target, spec: None)  # nor here
    runner = tmp_path / "stand_in_runner.py"
    runner.write_text("import json\nprint(json.dumps({'name': 'stand-in', 'version': '0'}))\n")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"stand-in model")
    workdir = tmp_path / "device"
    profile = parse_profile(tmp_path / "loopback.yaml", sshd.profile(workdir, python=sys.executable))
    spec = ServiceSpec.parse("serve", "--host 0.0.0.0", tls=True)
    result = edgekit.deploy.deploy(profile, model, runner=runner, service=spec)
    cert, key = workdir / "tls" / "serve-cert.pem", workdir / "tls" / "serve-key.pem"
    assert result["tls"]["sha256"] == fingerprint_of_pem(cert.read_text()) == installed["tls"].sha256
    assert oct(key.stat().st_mode & 0o777) == "0o600" and installed["tls"].key == str(key)
    recorded = manifests.read(Path(result["record"]), manifests.DeploymentManifest).tls
    assert recorded == manifests.TlsRecord(sha256=result["tls"]["sha256"], cert=str(cert), key=str(key))
    again = edgekit.deploy.deploy(profile, model, runner=runner, service=spec)
    assert again["tls"]["sha256"] == result["tls"]["sha256"]  # kept across deployments: pins stay valid


def test_a_device_without_openssl_gets_one_line(tmp_path, monkeypatch):
    bare = tmp_path / "bin"  # a PATH with the shell tools the script needs, but no openssl
    bare.mkdir()
    for tool in ("sh", "mkdir", "chmod"):
        (bare / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bare))
    target = make_target(load_profile("desktop"))
    target.prepare()
    with pytest.raises(EdgekitError) as error:
        ensure_certificate(target)
    assert "`openssl` is not installed on the device" in str(error.value) and "\n" not in str(error.value)
