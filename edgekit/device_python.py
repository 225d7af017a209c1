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
# arguments reach the device verbatim (no shell expands ~).
_ENSURE_VENV = r"""
import os, subprocess, sys
path = os.path.expanduser(sys.argv[1])
python = os.path.join(path, "bin", "python")
if os.path.exists(python):
    print("exists " + python)
    sys.exit(0)
done = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", path],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
if done.returncode:
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    print("error " + (" ".join(lines[-3:]) if lines else "exit code %d" % done.returncode))
    sys.exit(3)
print("created " + python)
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
    if code == 127:
        raise EdgekitError(f"{profile.name}: `{profile.base_python}` not found on the device; install Python 3 "
                           f"or set `python:` in {profile.source or 'the profile'}")
    reason = detail if state == "error" else (err.strip().splitlines() or [f"exit code {code}"])[-1]
    hint = "sudo apt install python3-venv" if "ensurepip" in reason or "venv" in reason else "see the reason"
    raise EdgekitError(f"{profile.name}: cannot create the venv {profile.venv} with {profile.base_python} "
                       f"({reason[:300]}); on the device: {hint}, then run the command again")
