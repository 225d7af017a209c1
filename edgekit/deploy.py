"""Put a model and the runner on a device (`edgekit deploy`) and ask a device what it can run (`doctor`).

Both go through `edgekit.transport`, so the desktop and a Pi over SSH are reached by the same code.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from edgekit import manifests
from edgekit.artifacts import MANIFEST, check_writable, edgekit_home, sha256_file
from edgekit.certificate import ensure_certificate
from edgekit.device_python import ensure_venv, fix_requirements
from edgekit.device_python import fix as fix_device
from edgekit.device_state import CurrentModel, read_current, write_current
from edgekit.devices import RUNNER_NAME, SHIPPED_DIR, DeviceProfile, runner_path, user_devices_dir
from edgekit.errors import EdgekitError
from edgekit.render import TERMINAL_WIDTH, spill_table
from edgekit.service import check_service_possible, install_service
from edgekit.transport.targets import make_target


def _verified_manifest(model_path: Path, manifest_path: Path | None) -> Path | None:
    """The manifest that travels with a model, after checking it still describes that model file."""
    if manifest_path is not None and not manifest_path.is_file():
        raise EdgekitError(f"{manifest_path}: no such manifest file")
    manifest_path = manifest_path or model_path.parent / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = manifests.read_file(manifest_path)
    if model_path.name in manifest.files:
        manifests.verify_files(model_path.parent, manifest, names=[model_path.name])
    return manifest_path


def deploy(profile: DeviceProfile, model_path: Path, *, manifest_path: Path | None = None,
           labels_path: Path | None = None, runner: Path | None = None, accept_new_host_key: bool = False,
           known_hosts_file: str | None = None, runtime: str | None = None, service=None,
           make_current: bool = True) -> dict:
    """Copy the runner, a model and its manifest and labels (default: beside the model) to a device;
    every file's sha256 is checked there.

    Models go to `models/<first 12 hex of sha256>/` so deploying a new variant never overwrites the
    one a running service may still be using, and the runner's logs can name the exact model.
    With `make_current` the model becomes the device's current one (`current.json`, see
    edgekit.device_state), the one it replaces kept as `previous`; a rollout copies without it.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise EdgekitError(f"{model_path}: no such model file")
    manifest_path = _verified_manifest(model_path, Path(manifest_path) if manifest_path else None)
    check_writable(edgekit_home() / "deployments")  # before the copy, not after it: the record must fit
    model_sha = sha256_file(model_path)
    model_dir = f"models/{model_sha[:12]}"
    model_rel = f"{model_dir}/{model_path.name}"
    uploads = {RUNNER_NAME: Path(runner) if runner else runner_path(), model_rel: model_path}
    if manifest_path:
        uploads[f"{model_dir}/{MANIFEST}"] = manifest_path
    if labels_path and not Path(labels_path).is_file():
        raise EdgekitError(f"{labels_path}: no such labels file")
    labels_path = labels_path or (model_path.parent / "labels.txt")
    if Path(labels_path).is_file():
        uploads[f"{model_dir}/{Path(labels_path).name}"] = Path(labels_path)
    target = make_target(profile, accept_new_host_key=accept_new_host_key, known_hosts_file=known_hosts_file)
    target.prepare()
    if service is not None:  # no systemd or no root: say so before anything is copied
        check_service_possible(target, service)
    venv = ensure_venv(target, profile)
    files = {name: {"path": target.path(name), "sha256": target.put(local, name)} for name, local in uploads.items()}
    runtime = runtime or profile.runtime
    loaded = _check_loads(target, model_rel, runtime)
    pinned = "" if runtime == "auto" else f" --runtime {runtime}"
    result = {
        "device": profile.name, "address": profile.address, "workdir": target.workdir,
        "runner": target.path(RUNNER_NAME), "model": target.path(model_rel),
        "model_sha256": model_sha, "files": files, "runtime": loaded, "venv": venv,
        "classify": f"{profile.interpreter} {shlex.quote(target.path(RUNNER_NAME))} classify "
                    f"{shlex.quote(target.path(model_rel))} IMAGE_OR_DIR{pinned}",
    }
    tls = None
    if service is not None:  # edgekit.service.ServiceSpec: keep it running under systemd
        tls = ensure_certificate(target) if service.tls else None
        result["service"] = {**install_service(target, profile, service, runner=target.path(RUNNER_NAME),
                                               model=target.path(model_rel), model_sha256=model_sha, tls=tls),
                             "mode": service.mode, "args": list(service.args)}  # for fleet rollout's restarts
    if tls is not None:
        result["tls"] = {"sha256": tls.sha256, "cert": tls.cert, "key": tls.key}
    record = _record_deployment(profile, target.workdir, target.path(model_rel), model_path, model_sha, files,
                                result.get("service"), tls)
    if make_current:
        result["current"] = _make_current(target, model_rel, model_sha, _variant_name(manifest_path),
                                          result.get("service"))
    return {"record": str(record), **result}


def _variant_name(manifest_path: Path | None) -> str | None:
    return getattr(manifests.read_file(manifest_path), "name", None) if manifest_path else None


def _make_current(target, model_rel: str, model_sha: str, variant: str | None, service: dict | None) -> str:
    """Point current.json at the new model; the one it replaces becomes `previous` (rollback target)."""
    try:
        old = read_current(target)
    except EdgekitError:  # damaged: this deploy is what repairs it
        old = None
    previous = old.previous if old and old.model_sha256 == model_sha else (old.ref if old else None)
    write_current(target, CurrentModel(model=model_rel, model_sha256=model_sha, variant=variant, previous=previous,
                                       service=service or (old.service if old else None), by="deploy"))
    return target.path("current.json")


def _check_loads(target, model_rel: str, runtime: str) -> dict:
    """Load and run the deployed model once with the runtime it will run with, on the device itself.

    A model that LiteRT on the host loads may use an op the device's older tflite-runtime lacks;
    deploy is where that should surface, not the first classify.
    """
    argv = [target.profile.interpreter, RUNNER_NAME, "_probe", model_rel]
    argv += [] if runtime == "auto" else ["--runtime", runtime]
    code, out, err = target.run(argv, timeout=300, what=f"{RUNNER_NAME} _probe")
    lines = out.decode("utf-8", "replace").strip().splitlines()
    if code != 0 or not lines:
        reason = next((line.split("error: ", 1)[1] for line in reversed(err.splitlines()) if "error: " in line),
                      f"exit code {code}")
        raise EdgekitError(f"{target.profile.name}: the deployed model does not load with runtime {runtime} "
                           f"({reason}); check `edgekit doctor --device {target.profile.name}`")
    loaded = json.loads(lines[-1])
    return {"name": loaded.get("name"), "version": loaded.get("version")}


def _record_deployment(profile: DeviceProfile, workdir: str, remote_model: str, model_path: Path, model_sha: str,
                       files: dict, service: dict | None = None, tls=None) -> Path:
    """A deployment manifest under $EDGEKIT_HOME/deployments/<device>/<sha12>: what went where, verified."""
    directory = edgekit_home() / "deployments" / profile.name / model_sha[:12]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgekitError(f"{directory}: cannot record the deployment ({exc.strerror or exc}); the files are on "
                           "the device, so free some space or make EDGEKIT_HOME writable and deploy again") from None
    parent = manifests.ParentRef(path=str(model_path.resolve()), sha256=model_sha, file=model_path.name)
    manifests.write(directory, manifests.DeploymentManifest(
        device=profile.name, address=profile.address, workdir=workdir, model=remote_model, model_sha256=model_sha,
        parent=parent, remote_files=files, service=service,
        tls=manifests.TlsRecord(sha256=tls.sha256, cert=tls.cert, key=tls.key) if tls is not None else None), [])
    return directory


def doctor(profile: DeviceProfile, *, runner: Path | None = None, accept_new_host_key: bool = False,
           known_hosts_file: str | None = None, timeout: float = 300, fix: bool = False) -> dict:
    """Copy the runner to the device and return its `doctor` report, with what the profile expects.

    A device that cannot run models yet is a report (`ok` false, `missing` lists install commands), not
    an exception: saying what to install is the point of doctor. Unreachable devices still raise. With
    `fix`, what is missing is pip-installed into the profile's venv (device_python.fix) and doctor runs
    again, so the report is the device as it now is.
    """
    target = make_target(profile, accept_new_host_key=accept_new_host_key, known_hosts_file=known_hosts_file)
    target.prepare()
    venv = ensure_venv(target, profile)
    target.put(Path(runner) if runner else runner_path(), RUNNER_NAME)
    report = target.run_runner(["doctor"], timeout=timeout, check=False)
    fixed = None
    if fix and (report.get("missing") or fix_requirements(profile, report) or _numpy_hidden(report)):
        fixed = fix_device(target, profile, report)
        report = target.run_runner(["doctor"], timeout=timeout, check=False)
    report["venv"], report["fixed"] = venv, fixed
    report["next"] = _next_steps(profile, report)
    report["device"] = {
        "name": profile.name, "address": profile.address, "workdir": target.workdir,
        "python": profile.interpreter, "runtime": profile.runtime, "delegate": profile.delegate,
    }
    report["warnings"] = list(report.get("warnings", [])) + _profile_warnings(profile, report)
    report["ok"] = "error" not in report and not report.get("missing")
    return report


def _numpy_hidden(report: dict) -> bool:
    return bool(report.get("numpy_system") and report.get("numpy") and report["numpy_system"] != report["numpy"])


def _next_steps(profile: DeviceProfile, report: dict) -> list[str]:
    """For an edgekit user the way to install is the profile's venv and `doctor --fix`, not commands typed
    on the device: one step per line, the edgekit command pasteable as it is."""
    if not (report.get("missing") or _numpy_hidden(report)) or not profile.is_remote and not profile.venv:
        return []
    steps = []
    if not profile.venv:
        steps.append(f"add `venv: ~/edgekit/venv` to {profile.source or 'the device profile'}")
    return steps + [f"edgekit doctor --device {shlex.quote(_device_argument(profile))} --fix"]


def _device_argument(profile: DeviceProfile) -> str:
    """What to pass as --device: the name for a shipped or $EDGEKIT_HOME/devices profile, else its file."""

    source = Path(profile.source) if profile.source else None
    if source is None or source.resolve().parent in (SHIPPED_DIR, user_devices_dir().resolve()):
        return profile.name
    return str(source)


def _profile_warnings(profile: DeviceProfile, report: dict) -> list[str]:
    """Where the device differs from what its profile promises benchmarks will run with."""
    warnings = []
    machine = report.get("machine")
    if profile.arch != "any" and machine and machine != profile.arch:
        warnings.append(f"{profile.source}: arch is {profile.arch} but the device reports {machine}")
    runtimes = {r.get("name"): r for r in report.get("runtimes", []) if isinstance(r, dict)}
    wanted = runtimes.get(profile.runtime)
    if profile.runtime != "auto" and wanted is not None and not wanted.get("available"):
        warnings.append(f"{profile.source}: runtime {profile.runtime} is not usable on the device; "
                        f"{' && '.join((wanted.get('install') or 'install it').splitlines())}")
    edgetpu = report.get("edgetpu")
    if profile.delegate == "edgetpu" and isinstance(edgetpu, dict) and not edgetpu.get("device"):
        warnings.append(f"{profile.name}: no Edge TPU found ({edgetpu.get('error') or 'not detected'}); "
                        f"{edgetpu.get('install') or ''}".rstrip("; "))
    return warnings


def doctor_text(report: dict, width: int | None = TERMINAL_WIDTH) -> str:
    """Everything `doctor --json` holds, as text: scalars, then the runtimes table, Edge TPU, the rest.

    The JSON and the text must tell the same story; a runtimes table only in `--json` hid the one
    line a user needed (which interpreter is missing and how to install it). Tables fit `width` columns
    (None: full width) by moving their longest columns (errors, install commands) under the table, one
    line per value, so a command stays whole and pasteable.
    """
    nested = ("runtimes", "edgetpu", "device", "missing", "warnings", "next")
    lines = [f"{key:<16} {value}" for key, value in report.items()
             if key not in nested and not isinstance(value, (dict, list))]
    runtimes = [r for r in report.get("runtimes") or [] if isinstance(r, dict)]
    if runtimes:
        rows = [{"name": r.get("name"), "available": "yes" if r.get("available") else "no",
                 "version": r.get("version"), "error": r.get("error"),
                 "install": " && ".join((r.get("install") or "-").splitlines())} for r in runtimes]
        lines += ["", "runtimes:"] + spill_table(rows, width)
    for section in ("edgetpu", "device"):
        if isinstance(report.get(section), dict):
            lines += ["", f"{section}:"] + [f"  {k:<14} {v}" for k, v in report[section].items()]
    for key, value in report.items():  # anything else structured the runner may add later
        if key in nested or not isinstance(value, (dict, list)):
            continue
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            lines += ["", f"{key}:"] + spill_table([{"name": k, **v} for k, v in value.items()], width)
        else:
            lines += ["", f"{key}: {json.dumps(value)}"]
    if report.get("missing"):  # commands, one per line, to paste on the device
        lines += ["", "missing; on the device run:"] + [f"  {line}" for line in report["missing"]]
    if report.get("next"):
        lines += ["", "or with edgekit:"] + [f"  {line}" for line in report["next"]]
    lines += [f"warning: {line}" for line in report.get("warnings") or []]
    return "\n".join(lines)
