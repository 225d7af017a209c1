"""The self-signed certificate a device's `serve` presents, made on the device, pinned on the host.

Why on the device with the `openssl` command line, not on the host: the private key then never leaves the
device (nothing to copy, nothing to leak from the host's disk or an SSH session log), Python's standard
library cannot make certificates, and the `cryptography` package is not among edgekit's dependencies
(it is not installed by them either). Raspberry Pi OS and Debian ship `openssl`; where it is missing the
error says how to install it. The host reads the certificate (public) back and records its SHA-256 in the
deployment manifest; clients pin that fingerprint (`edgekit.transport.https`), so no CA is involved.

A certificate that exists is kept: redeploying a model must not change the fingerprint clients pinned.
Delete the `tls/` folder in the device's work directory to make a new one.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from edgekit.errors import EdgekitError
from edgekit.transport.https import fingerprint_of_pem

TLS_DIR = "tls"
CERT_NAME = "serve-cert.pem"
KEY_NAME = "serve-key.pem"
NO_OPENSSL = 92  # exit code of the device-side script
DAYS = 3650  # pinned, not CA-checked: expiry would only break clients without adding trust


@dataclass(frozen=True)
class Certificate:
    """Where the certificate and key live on the device, and the fingerprint clients pin."""

    cert: str
    key: str
    sha256: str


def _script(workdir: str) -> str:
    """POSIX sh: make the pair once (key mode 600 in a 700 folder, both renamed into place), print the cert."""
    cert, key = f"{TLS_DIR}/{CERT_NAME}", f"{TLS_DIR}/{KEY_NAME}"
    return (
        "set -e\n"
        f"cd {shlex.quote(workdir)}\n"
        f"mkdir -p {TLS_DIR} && chmod 700 {TLS_DIR}\n"
        f"if [ ! -s {cert} ] || [ ! -s {key} ]; then\n"
        f"  command -v openssl >/dev/null 2>&1 || exit {NO_OPENSSL}\n"
        f"  rm -f {cert}.part {key}.part\n"
        f"  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days {DAYS}"
        f" -subj /CN=edgekit-runner -keyout {key}.part -out {cert}.part) >/dev/null 2>&1\n"
        f"  mv -f {key}.part {key} && mv -f {cert}.part {cert}\n"
        "fi\n"
        f"chmod 600 {key}\n"
        f"cat {cert}\n"
    )


def ensure_certificate(target) -> Certificate:
    """The device's serve certificate (made now if it has none) and its SHA-256, read over the transport."""
    code, out, err = target.run(["sh", "-c", _script(target.workdir)], timeout=120,
                                what="make the serve TLS certificate")
    if code == NO_OPENSSL:
        raise EdgekitError(f"{target.name}: `openssl` is not installed on the device, so no TLS certificate can be "
                           "made; install it (sudo apt install openssl) and deploy again")
    if code != 0:
        detail = (err.strip().splitlines() or [f"exit code {code}"])[-1]
        raise EdgekitError(f"{target.name}: making the serve TLS certificate in {target.path(TLS_DIR)} failed "
                           f"({detail[:300]}); check the work directory is writable")
    pem = out.decode("utf-8", "replace")
    start = pem.find("-----BEGIN CERTIFICATE-----")
    if start < 0:
        raise EdgekitError(f"{target.name}: {target.path(TLS_DIR)}/{CERT_NAME} is not a PEM certificate; delete "
                           f"{target.path(TLS_DIR)} on the device and deploy again")
    return Certificate(cert=target.path(posixpath.join(TLS_DIR, CERT_NAME)),
                       key=target.path(posixpath.join(TLS_DIR, KEY_NAME)), sha256=fingerprint_of_pem(pem[start:]))
