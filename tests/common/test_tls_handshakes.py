"""Web config TLS semantics over real handshakes against a real exporter process.

The simulated GPU exporter is the server (the shared HTTP core is what is under test); clients
are Python's ssl module and the openssl command line, so what is checked is what a scraper sees
on the wire: which cipher and group are negotiated, which client certificates are let in.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import trustme

from tests.harness.processes import LOOPBACK, ProcessManager, free_port, http_get

BIN = Path(sys.executable).parent
OPENSSL = shutil.which("openssl")
AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"  # trustme issues ECDSA keys
AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()

Start = Callable[[str], str]


@pytest.fixture
def pki(tmp_path: Path) -> trustme.CA:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return ca


@pytest.fixture
def start(procs: ProcessManager, tmp_path: Path, pki: trustme.CA) -> Start:
    """Start gpu-exporter with `tls_server_config` lines appended to the server cert/key; its https URL."""

    def run(tls_lines: str, rest: str = "") -> str:
        port = free_port()
        web = tmp_path / f"web-{port}.yml"
        web.write_text(f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{tls_lines}{rest}")
        argv = [str(BIN / "gpu-exporter"), "--backend=sim", "--sim-gpus=1", f"--listen={LOOPBACK}:{port}"]
        proc = procs.start(f"gpu-exporter-{port}", [*argv, f"--web-config={web}"])
        url = f"https://{LOOPBACK}:{port}"
        probe = client(pki, cert=pki.issue_cert("probe.example"))
        proc.wait_ready(lambda: _status(f"{url}/healthz", probe) is not None, what="exporter over TLS")
        return url

    return run


def client(
    ca: trustme.CA,
    *,
    ciphers: str | None = None,
    tls12: bool = False,
    curve: str | None = None,
    cert: trustme.LeafCert | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        ctx.set_ciphers(ciphers)
    if curve:
        ctx.set_ecdh_curve(curve)  # on a client this is the whole supported_groups list
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


def _status(url: str, ctx: ssl.SSLContext, headers: dict[str, str] | None = None) -> int | None:
    """The HTTP status, or None when the TLS handshake (or the connection) was refused."""
    try:
        return http_get(url, context=ctx, headers=headers, timeout=5)[0]
    except OSError:  # urllib wraps ssl errors and resets in URLError, an OSError
        return None


def negotiated(url: str, ctx: ssl.SSLContext) -> str:
    import socket

    port = int(url.rsplit(":", 1)[1])
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=LOOPBACK) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return cipher[0]


def s_client(url: str, ca: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL, "openssl is in APT_PACKAGES"
    host_port = url.removeprefix("https://")
    return subprocess.run(
        [OPENSSL, "s_client", "-connect", host_port, "-CAfile", str(ca), "-verify_return_error", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_cipher_suites_and_server_preference_are_applied(start: Start, pki: trustme.CA, tmp_path: Path) -> None:
    suites = "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n"
    url = start(suites + "  max_version: TLS12\n")
    # Outside the list: no handshake, from Python and from openssl alike.
    assert _status(f"{url}/metrics", client(pki, tls12=True, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305")) is None
    refused = s_client(url, tmp_path / "ca.crt", "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert refused.returncode != 0
    # The client prefers AES256, the server's order (prefer_server_cipher_suites defaults to true) wins.
    assert negotiated(url, client(pki, tls12=True, ciphers=f"{AES256}:{AES128}")) == AES128
    accepted = s_client(url, tmp_path / "ca.crt", "-tls1_2", "-cipher", AES256)
    assert accepted.returncode == 0 and AES256 in accepted.stdout

    url = start(suites + "  prefer_server_cipher_suites: false\n  max_version: TLS12\n")
    assert negotiated(url, client(pki, tls12=True, ciphers=f"{AES256}:{AES128}")) == AES256


def test_curve_preferences_are_applied(start: Start, pki: trustme.CA, tmp_path: Path) -> None:
    url = start("  curve_preferences: [CurveP384]\n")
    assert _status(f"{url}/healthz", client(pki, curve="prime256v1")) is None
    assert _status(f"{url}/healthz", client(pki, curve="secp384r1")) == 200
    assert s_client(url, tmp_path / "ca.crt", "-groups", "X25519").returncode != 0
    ok = s_client(url, tmp_path / "ca.crt", "-groups", "X25519:P-384")
    assert ok.returncode == 0 and "Server Temp Key: ECDH, secp384r1" in ok.stdout, ok.stdout


def test_require_any_client_cert_takes_any_certificate_but_not_none(start: Start, pki: trustme.CA) -> None:
    url = start("  client_auth_type: RequireAnyClientCert\n")
    stranger = trustme.CA().issue_cert("stranger.example")  # from a CA the server has never heard of
    assert _status(f"{url}/healthz", client(pki, cert=stranger)) == 200
    assert _status(f"{url}/healthz", client(pki)) is None


def test_request_client_cert_and_allowed_sans(start: Start, pki: trustme.CA) -> None:
    url = start("  client_auth_type: RequestClientCert\n")
    assert _status(f"{url}/healthz", client(pki)) == 200
    assert _status(f"{url}/healthz", client(pki, cert=trustme.CA().issue_cert("x.example"))) == 200

    url = start("  client_auth_type: RequestClientCert\n  client_allowed_sans: [prometheus.example, 10.0.0.1]\n")
    assert _status(f"{url}/healthz", client(pki)) == 403  # no certificate, so no allowed SAN
    assert _status(f"{url}/healthz", client(pki, cert=trustme.CA().issue_cert("prometheus.example"))) == 200
    assert _status(f"{url}/healthz", client(pki, cert=trustme.CA().issue_cert("10.0.0.1"))) == 200


def test_verified_client_cert_needs_an_allowed_san(start: Start, pki: trustme.CA, tmp_path: Path) -> None:
    url = start(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        "  client_allowed_sans: [prometheus.example, probe.example]\n"
    )
    assert _status(f"{url}/metrics", client(pki, cert=pki.issue_cert("prometheus.example"))) == 200
    assert _status(f"{url}/metrics", client(pki, cert=pki.issue_cert("mallory.example"))) == 403
    assert _status(f"{url}/metrics", client(pki, cert=trustme.CA().issue_cert("prometheus.example"))) is None
    # openssl too: the right SAN from an unknown CA fails the handshake itself.
    outsider = trustme.CA().issue_cert("prometheus.example")
    outsider.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "outsider.pem"))
    assert s_client(url, tmp_path / "ca.crt", "-tls1_2", "-cert", str(tmp_path / "outsider.pem")).returncode != 0


def test_headers_on_every_response_and_basic_auth_edge_cases(start: Start, pki: trustme.CA) -> None:
    url = start(
        "",
        f"http_server_config:\n  headers:\n    X-Frame-Options: deny\nbasic_auth_users:\n  prom: '{HASH}'\n",
    )
    ctx = client(pki)

    def get(path: str, authorization: str | None = None) -> tuple[int, str | None]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"{url}{path}", headers={"Authorization": authorization} if authorization else {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                return resp.status, resp.headers.get("X-Frame-Options")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("X-Frame-Options")

    good = b64encode(b"prom:s3cret").decode()
    assert get("/metrics") == (401, "deny")
    assert get("/metrics", f"Basic {good}") == (200, "deny")
    assert get("/nowhere", f"Basic {good}") == (404, "deny")
    assert get("/metrics", f"basic {good}") == (200, "deny")  # the scheme is case-insensitive
    assert get("/metrics", f"BASIC {good}") == (200, "deny")
    long_password = b64encode(b"prom:" + b"s" * 73).decode()
    assert get("/metrics", f"Basic {long_password}") == (401, "deny")  # Go's bcrypt: too long, not a 500


@pytest.mark.parametrize(
    ("tls_lines", "key"),
    [
        ("  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", "cipher_suites"),
        ("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "cipher_suites"),
        ("  curve_preferences: [CurveP999]\n", "curve_preferences"),
        ("  client_allowed_sans: [prometheus.example]\n", "client_allowed_sans"),
        ("  client_ca_file: ca.crt\n", "client_ca_file"),
        ("  prefer_server_cipher_suites: maybe\n", "prefer_server_cipher_suites"),
        ("http_server_config:\n  headers:\n    Set-Cookie: a=b\n", "Set-Cookie"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "X-Frame-Options"),
    ],
)
def test_settings_that_cannot_apply_exit_2_naming_the_key(
    tls_lines: str, key: str, pki: trustme.CA, tmp_path: Path
) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{tls_lines}")
    result = subprocess.run(
        [str(BIN / "gpu-exporter"), "--backend=sim", f"--listen={LOOPBACK}:{free_port()}", f"--web-config={web}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert key in result.stderr and "Traceback" not in result.stderr
