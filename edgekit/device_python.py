"""The Python the runner uses on a device: a venv that `deploy` and `doctor` create when the profile names one.

Debian 12 and Raspberry Pi OS bookworm mark the system Python as externally managed (PEP 668), so
`pip install ai-edge-litert` fails there. A venv made with --system-site-packages accepts pip installs and
still sees apt's numpy, Pillow, OpenCV and picamera2 (which are not on PyPI for every board).
"""

from __future__ import annotations

from edgekit.devices import DeviceProfile
from edgekit.errors import EdgekitError

VENV_EXIT = 3  # the script's "I printed the reason" exit code

# Runs with the device's base Python (3.9+, standard library only). The path is expanded there, since
# arguments reach the device verbatim (no shell expands ~). An existing venv is trusted only when pip
# imports in it and it sees the system's site-packages (apt's numpy, OpenCV, Picamera2); otherwise venv
# runs over it again, which repairs both. A venv this script started and could not finish (no
# python3-venv: a bin/python without pip) is removed, so the next run does not take it for a venv.
_ENSURE_VENV = r"""
import os, re, shutil, subprocess, sys
path = os.path.expanduser(sys.argv[1])
python = os.path.join(path, "bin", "python")

def problem():
    try:
        with open(os.path.join(path, "pyvenv.cfg")) as handle:
            config = handle.read()
    except OSError:
        return "no pyvenv.cfg"
    if not re.search(r"^\s*include-system-site-packages\s*=\s*true\s*$", config, re.M | re.I):
        return "system site-packages off"
    if subprocess.run([python, "-c", "import pip"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        return "no pip"
    return None

existed = os.path.lexists(path)
found = problem() if os.path.exists(python) else "no bin/python"
if existed and found is None:
    print("exists " + python)
    sys.exit(0)
made_here = not existed or (os.path.isfile(os.path.join(path, "pyvenv.cfg")) and found in ("no pip", "no bin/python"))
if existed and os.listdir(path) and not os.path.isfile(os.path.join(path, "pyvenv.cfg")):
    print("error " + path + " exists and is not a venv; move it away or name another venv in the profile")
    sys.exit(3)
done = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", path],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
left = problem() if not done.returncode else "venv failed"
if left:
    if made_here:  # half-made (bin/python without pip): next time it must not pass for a venv
        shutil.rmtree(path, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    print("error " + (" ".join(lines[-3:]) if lines else left))
    sys.exit(3)
print(("repaired " + found + " " if existed else "created ") + python)
"""


def ensure_venv(target, profile: DeviceProfile) -> dict | None:
    """Create the profile's venv on the device if it is missing; None when the profile has no venv."""
    if not profile.venv:
        return None
    code, out, err = target.run([profile.base_python, "-c", _ENSURE_VENV, profile.venv], timeout=300,
                                what=f"create {profile.venv}")
    text = out.decode("utf-8", "replace").strip().splitlines()
    state, _, detail = (text[-1] if text else "").partition(" ")
    if code == 0 and state in ("exists", "created"):
        return {"venv": profile.venv, "python": detail, "created": state == "created"}
    if code == 0 and state == "repaired":  # "repaired <what was wrong> <python>"
        return {"venv": profile.venv, "python": detail.rsplit(" ", 1)[-1], "created": True,
                "repaired": detail.rsplit(" ", 1)[0]}
    if code == 127:
        raise EdgekitError(f"{profile.name}: `{profile.base_python}` not found on the device; install Python 3 "
                           f"or set `python:` in {profile.source or 'the profile'}")
    reason = detail if state == "error" else (err.strip().splitlines() or [f"exit code {code}"])[-1]
    hint = "sudo apt install python3-venv" if "ensurepip" in reason or "venv" in reason else "see the reason"
    raise EdgekitError(f"{profile.name}: cannot create the venv {profile.venv} with {profile.base_python} "
                       f"({reason[:300]}); fix that on the device and run the command again: {hint}")


PIP_NAMES = {"litert": ("ai-edge-litert",), "tflite_runtime": ("tflite-runtime",), "tf.lite": ("tensorflow",),
             "numpy": ("numpy",), "pillow": ("pillow",)}


def fix_requirements(profile: DeviceProfile, report: dict) -> list[str]:
    """What `doctor --fix` pip-installs into the venv: the runtime and packages doctor found missing, with
    numpy pinned to the system's own version.

    Without the pin, `pip install ai-edge-litert` pulls numpy 2 into the venv, which hides apt's numpy
    1.24 and breaks apt's OpenCV (`_ARRAY_API not found`); with it pip keeps apt's numpy.
    """
    runtimes = {r.get("name"): r for r in report.get("runtimes") or [] if isinstance(r, dict)}
    wanted = "litert" if profile.runtime == "auto" else profile.runtime
    needed = []
    if not any(r.get("available") for r in runtimes.values()) or not runtimes.get(wanted, {}).get("available"):
        needed += PIP_NAMES[wanted]
    needed += [name for key in ("pillow", "numpy") if not report.get(key) for name in PIP_NAMES[key]]
    system = report.get("numpy_system")
    if system and "numpy" not in needed and needed:
        needed.append(f"numpy=={system}")
    elif wanted == "tflite_runtime" and "numpy" in needed:
        needed[needed.index("numpy")] = "numpy<2"
    return needed


def fix(target, profile: DeviceProfile, report: dict, timeout: float = 1800) -> dict:
    """Install into the profile's venv what `doctor` found missing (`edgekit doctor --fix`), over SSH.

    Only a venv is changed: a system Python is apt's (PEP 668), and the desktop's is edgekit's own,
    where pip would swap numpy under TensorFlow. Returns what was installed and uninstalled.
    """
    if not profile.venv:
        raise EdgekitError(f"{profile.name}: --fix installs into a venv on the device; add `venv: ~/edgekit/venv` "
                           f"to {profile.source or 'the profile'} and run the command again")
    done = {"installed": [], "uninstalled": []}
    system, here = report.get("numpy_system"), report.get("numpy")
    if system and here and system != here:  # a venv numpy that hides apt's: apt's OpenCV fails under it
        _pip(target, profile, ["uninstall", "-y", "numpy"], timeout)
        done["uninstalled"].append(f"numpy {here}")
        # the runtime again, so pip swaps what was built for numpy 2 (ml_dtypes 0.6) for builds that fit
        report = {**report, "numpy": system, "runtimes": []}
    requirements = fix_requirements(profile, report)
    if requirements:
        _pip(target, profile, ["install", *requirements], timeout)
        done["installed"] = requirements
    return done


def _pip(target, profile: DeviceProfile, args: list[str], timeout: float) -> None:
    argv = [profile.interpreter, "-m", "pip", "--disable-pip-version-check", *args]
    code, out, err = target.run(argv, timeout=timeout, what="pip " + " ".join(args))
    if code:
        lines = [line for line in (err + "\n" + out.decode("utf-8", "replace")).splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else f"exit {code}")
        raise EdgekitError(f"{profile.name}: `{' '.join(argv)}` failed on the device ({reason.strip()[:300]})")
