"""Talk to a device's `serve` over HTTPS, trusting exactly one certificate: the one its deployment pinned.

A runner's certificate is self-signed on the device (`edgekit deploy --service serve --tls`), so there is
no CA to ask; instead the deployment manifest records the certificate's SHA-256 and every connection
checks the peer's certificate against it before the bearer token is sent. Plain HTTP is only used to
reach 127.0.0.1 (the runner refuses it anywhere else), so a token never crosses a network in clear.

    from edgekit.transport.https import fetch_json
    stats = fetch_json("https://192.168.1.20:8080/stats", token, fingerprint, timeout=5)
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import socket
import ssl
from urllib.parse import urlsplit

from edgekit.errors import EdgekitError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_RESPONSE_BYTES = 16 * 2**20  # a device's answer is a stranger's: /stats and /latest are a few KB
_HEX = re.compile(r"[0-9a-f]{64}")


def normalize_fingerprint(text: str, where: str = "fingerprint") -> str:
    """64 lowercase hex digits; `openssl x509 -fingerprint -sha256` style (AB:CD:...) is accepted too."""
    value = str(text or "").strip().lower().removeprefix("sha256:").removeprefix("sha256 fingerprint=")
    value = value.replace(":", "")
    if not _HEX.fullmatch(value):
        raise EdgekitError(f"{where} {text!r}: not a SHA-256 certificate fingerprint (64 hex digits); take it "
                           "from the deployment manifest (`tls.sha256`)")
    return value


def fingerprint_of_pem(pem: str) -> str:
    """The SHA-256 of a PEM certificate's DER bytes: what a TLS client sees and pins."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    except ValueError as exc:
        raise EdgekitError(f"not a PEM certificate ({exc})") from None
    return hashlib.sha256(der).hexdigest()


def _client_context() -> ssl.SSLContext:
    """TLS 1.2+, no CA and no host name check: the pinned fingerprint is the whole of the trust."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _connection(url: str, fingerprint: str | None, timeout: float):
    """An open connection to the URL's host, the peer's certificate already checked; and the request path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EdgekitError(f"{url}: not an http(s) URL of a device's runner (https://HOST:PORT/PATH)")
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    address = f"{host}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "http":
        if host not in LOOPBACK:
            raise EdgekitError(f"{url}: plain HTTP beyond this machine would send the token in clear; use "
                               "https:// with the certificate fingerprint from the deployment manifest")
        return http.client.HTTPConnection(host, port, timeout=timeout), path, address
    if not fingerprint:
        raise EdgekitError(f"{url}: HTTPS to a device needs its pinned certificate fingerprint (`tls.sha256` in "
                           "the deployment manifest); redeploy with `--service serve --tls` if it has none")
    pinned = normalize_fingerprint(fingerprint)
    connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=_client_context())
    try:
        connection.connect()
    except (OSError, ssl.SSLError) as exc:
        connection.close()
        raise _unreachable(address, exc) from None
    der = connection.sock.getpeercert(binary_form=True) or b""
    actual = hashlib.sha256(der).hexdigest()
    if not hmac.compare_digest(actual, pinned):
        connection.close()
        raise EdgekitError(f"{address}: the certificate's sha256 {actual[:16]}… is not the pinned {pinned[:16]}…; "
                           "nothing was sent. If the device's certificate was made anew, redeploy with --tls to "
                           "record it; otherwise someone may be intercepting the connection")
    return connection, path, address


def _unreachable(address: str, exc: BaseException) -> EdgekitError:
    if isinstance(exc, ssl.SSLError):
        return EdgekitError(f"{address}: TLS handshake failed ({exc.reason or exc}); is the runner serving HTTPS "
                            "(--tls-cert/--tls-key) on that port?")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return EdgekitError(f"{address}: no answer in time; check the device is on and the runner serves there")
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return EdgekitError(f"{address}: cannot connect ({reason}); check the device is on and the runner's "
                        "service is running (`journalctl -u edgekit-serve`)")


def request(url: str, *, token: str | None = None, fingerprint: str | None = None, timeout: float = 10,
            method: str = "GET", body: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
    """One request to a runner: (HTTP status, body). The token goes only over a pinned or loopback link."""
    connection, path, address = _connection(url, fingerprint, timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise _unreachable(address, exc) from None
    finally:
        connection.close()
    if len(data) > MAX_RESPONSE_BYTES:
        raise EdgekitError(f"{address}: the answer to {method} {urlsplit(url).path} is over "
                           f"{MAX_RESPONSE_BYTES // 2**20} MB; not a runner's answer")
    return response.status, data


def fetch_json(url: str, token: str | None, fingerprint: str | None, timeout: float = 10, *,
               method: str = "GET", body: bytes | None = None, content_type: str | None = None) -> dict:
    """A runner's JSON answer (GET /stats, /latest, /health; POST /predict, /feedback); errors are one line."""
    status, data = request(url, token=token, fingerprint=fingerprint, timeout=timeout, method=method, body=body,
                           content_type=content_type)
    where = f"{method} {url}"
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = None
    if status == 401:
        raise EdgekitError(f"{where}: the token was refused (401); use the one in the device's runner.env")
    if not 200 <= status < 300:
        detail = payload.get("error") if isinstance(payload, dict) else None
        raise EdgekitError(f"{where}: HTTP {status}: {str(detail or data[:200].decode('utf-8', 'replace'))[:300]}")
    if not isinstance(payload, dict):
        raise EdgekitError(f"{where}: the answer is not a JSON object; is a runner serving there?")
    return payload
