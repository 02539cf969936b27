"""exporter-toolkit's web configuration file, read the way Prometheus's own exporters read it.

Format (https://prometheus.io/docs/prometheus/latest/configuration/https/)::

    tls_server_config:
      cert_file: server.crt          # relative paths resolve against this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
      min_version: TLS12
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hash

Unknown keys are errors, as in exporter-toolkit (it unmarshals strictly): a typo in a security
setting must not silently turn the setting off. Every TLS setting exporter-toolkit knows is
applied with Go's meaning (`cipher_suites`, `curve_preferences`, `prefer_server_cipher_suites`,
`client_allowed_sans`, the five `client_auth_type` values); one that cannot be applied here is a
start-up error naming the key, never accepted and ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import ssl
import threading
from base64 import b64decode
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from gpu_watchdog_core import openssl
from gpu_watchdog_core.sections import mapping_section, reject_unknown


class WebConfigError(ValueError):
    """The web config file is unreadable or invalid; the message says which key and why."""


class AuthBusy(RuntimeError):
    """Too many bcrypt checks are queued; the request is answered 429 instead of waiting."""


# Go's tls.ClientAuthType values. Go verifies the chain only for the last two; the first two
# ask for a certificate and take any (see gpu_watchdog_core.openssl).
_CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_CLIENT_AUTH_ALIASES = {"RequireClientCert": "RequireAnyClientCert"}  # exporter-toolkit keeps this old name
_VERIFYING = ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's tls.CipherSuites() for TLS 1.0-1.2 (the names exporter-toolkit accepts) to OpenSSL's names.
_CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# Go lists these too but never applies them (TLS 1.3 suites are not configurable in Go).
_TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
_CURVES = {"CurveP256": "P-256", "CurveP384": "P-384", "CurveP521": "P-521", "X25519": "X25519"}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "cert",
    "key",
    "client_auth_type",
    "client_ca_file",
    "client_ca",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
}
_HTTP_KEYS = {"http2", "headers"}
_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    cert_pem: str | None = None
    key_pem: str | None = None
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str | None = None
    cipher_suites: tuple[str, ...] = ()
    curve_preferences: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    client_allowed_sans: tuple[str, ...] = ()


# exporter-toolkit runs one bcrypt comparison at a time (a mutex around CompareHashAndPassword):
# bcrypt is CPU-bound by design and unbounded parallel checks are a cheap denial of service.
# We do the same, and refuse (429) rather than queue without end.
_MAX_QUEUED_BCRYPT = 64
# Go's bcrypt rejects longer passwords (ErrPasswordTooLong) and so exporter-toolkit answers 401.
_BCRYPT_MAX_PASSWORD = 72


@dataclass
class WebConfig:
    tls: TLSConfig | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    source: Path | None = None
    _auth_cache: dict[bytes, bool] = field(default_factory=dict, repr=False)
    _auth_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _bcrypt_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _bcrypt_pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _bcrypt_queued: int = field(default=0, repr=False)

    @property
    def auth_required(self) -> bool:
        return bool(self.basic_auth_users)

    def ssl_context(self) -> ssl.SSLContext | None:
        return build_ssl_context(self.tls) if self.tls else None

    def cached_authorization(self, header: str | None) -> bool | None:
        """The answer when it needs no bcrypt work (auth off, malformed, or seen before), else None."""
        if not self.basic_auth_users:
            return True
        try:
            _, password, key = _split_basic(header or "")
        except ValueError:
            return False
        if len(password) > _BCRYPT_MAX_PASSWORD:
            return False
        with self._auth_lock:
            return self._auth_cache.get(key)

    async def authorize(self, header: str | None) -> bool:
        """check_authorization off the event loop, one bcrypt at a time; AuthBusy when too many wait."""
        cached = self.cached_authorization(header)
        if cached is not None:
            return cached
        if self._bcrypt_queued >= _MAX_QUEUED_BCRYPT:
            raise AuthBusy("too many authentication checks in progress")
        if self._bcrypt_pool is None:
            self._bcrypt_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")
        self._bcrypt_queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._bcrypt_pool, self.check_authorization, header)
        finally:
            self._bcrypt_queued -= 1

    def client_certificate_allowed(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bool:
        """exporter-toolkit's client_allowed_sans: a DNS, e-mail, IP or URI SAN matches exactly."""
        if self.tls is None or not self.tls.client_allowed_sans:
            return True
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        if not cert:
            return False
        allowed = set(self.tls.client_allowed_sans)
        sans: tuple[tuple[str, str], ...] = cert.get("subjectAltName", ())  # type: ignore[assignment]
        for kind, value in sans:
            found = _normal_ip(value) if kind == "IP Address" else value
            if kind in ("DNS", "email", "IP Address", "URI") and found in allowed:
                return True
        return False

    def check_authorization(self, header: str | None) -> bool:
        """True when basic auth is off or the header carries valid credentials.

        bcrypt is deliberately slow (tens of ms at cost 10); like exporter-toolkit we cache the
        outcome per (user, password) digest so a scraper's every request does not pay it.
        """
        cached = self.cached_authorization(header)
        if cached is not None:
            return cached
        user, password, key = _split_basic(header or "")
        hashed = self.basic_auth_users.get(user)
        # Always spend one bcrypt check so response time does not reveal which users exist.
        target = hashed if hashed is not None else _DUMMY_HASH
        with self._bcrypt_lock:
            ok = bcrypt.checkpw(password, target) and hashed is not None
        with self._auth_lock:
            if len(self._auth_cache) > 1024:
                self._auth_cache.clear()
            self._auth_cache[key] = ok
        return ok


def _split_basic(header: str) -> tuple[str, bytes, bytes]:
    """(user, password bytes, cache key) from a Basic Authorization header; ValueError if malformed.

    As Go's Request.BasicAuth: the scheme is case-insensitive; the credentials are bytes, so a
    header that is not UTF-8 (aiohttp hands it over surrogate-escaped) is malformed, not a crash.
    """
    if header[:6].lower() != "basic ":
        raise ValueError("not basic auth")
    try:
        decoded = b64decode(header[6:], validate=True)
        user_bytes, sep, password = decoded.partition(b":")
        user = user_bytes.decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("malformed basic auth header") from None
    if not sep:
        raise ValueError("malformed basic auth header")
    return user, password, hashlib.sha256(user_bytes + b"\0" + password).digest()


def _normal_ip(value: str) -> str:
    # Python prints IPv6 SANs in OpenSSL's long upper-case form, Go in the short one.
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


_DUMMY_HASH = bcrypt.hashpw(b"not-a-user", bcrypt.gensalt(rounds=10))


def _expect_mapping(value: Any, where: str) -> dict[str, Any]:
    return mapping_section(value, where, WebConfigError)


def _check_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
    # exporter-toolkit calls them fields.
    reject_unknown(section, allowed, where, WebConfigError, noun="field")


def _resolve(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise WebConfigError(f"{where}: expected a file path")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _parse_tls(raw: dict[str, Any], base: Path) -> TLSConfig:
    _check_keys(raw, _TLS_KEYS, "tls_server_config")
    cert_file = _resolve(base, raw["cert_file"], "tls_server_config.cert_file") if raw.get("cert_file") else None
    key_file = _resolve(base, raw["key_file"], "tls_server_config.key_file") if raw.get("key_file") else None
    cert_pem, key_pem = raw.get("cert"), raw.get("key")
    if not (cert_file or cert_pem) or not (key_file or key_pem):
        raise WebConfigError("tls_server_config: both a certificate (cert_file) and a key (key_file) are required")
    client_auth = raw.get("client_auth_type") or "NoClientCert"
    client_auth = _CLIENT_AUTH_ALIASES.get(client_auth, client_auth)
    if client_auth not in _CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"tls_server_config.client_auth_type: {client_auth!r} is not one of {', '.join(_CLIENT_AUTH_TYPES)}"
        )
    ca = (
        _resolve(base, raw["client_ca_file"], "tls_server_config.client_ca_file") if raw.get("client_ca_file") else None
    )
    if raw.get("client_ca"):
        raise WebConfigError(
            "tls_server_config.client_ca: inline CA certificates are not supported; use client_ca_file"
        )
    if client_auth in _VERIFYING and ca is None:
        raise WebConfigError(f"tls_server_config: client_auth_type {client_auth} needs client_ca_file")
    if ca is not None and client_auth == "NoClientCert":
        # exporter-toolkit: "Client CA's have been configured without a Client Auth Policy".
        raise WebConfigError(
            "tls_server_config.client_ca_file: set without a client_auth_type that asks for a certificate"
        )
    for key in ("min_version", "max_version"):
        if raw.get(key) is not None and raw[key] not in _TLS_VERSIONS:
            raise WebConfigError(f"tls_server_config.{key}: {raw[key]!r} is not one of {', '.join(_TLS_VERSIONS)}")
    for path in (cert_file, key_file, ca):
        if path is not None and not path.is_file():
            raise WebConfigError(f"tls_server_config: file {path} does not exist")
    sans = _string_list(raw.get("client_allowed_sans"), "tls_server_config.client_allowed_sans")
    if sans and client_auth == "NoClientCert":
        raise WebConfigError(
            "tls_server_config.client_allowed_sans: needs a client_auth_type that asks for a certificate"
        )
    prefer = raw.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError("tls_server_config.prefer_server_cipher_suites: expected true or false")
    return TLSConfig(
        cert_file=cert_file,
        key_file=key_file,
        cert_pem=cert_pem,
        key_pem=key_pem,
        client_auth_type=client_auth,
        client_ca_file=ca,
        min_version=raw.get("min_version") or "TLS12",
        max_version=raw.get("max_version"),
        cipher_suites=tuple(_cipher(name) for name in _string_list(raw.get("cipher_suites"), "cipher_suites")),
        curve_preferences=tuple(
            _curve(name) for name in _string_list(raw.get("curve_preferences"), "curve_preferences")
        ),
        prefer_server_cipher_suites=prefer,
        client_allowed_sans=tuple(_normal_ip(san) for san in sans),
    )


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise WebConfigError(f"{where}: expected a list of strings")
    return list(value)


def _cipher(name: str) -> str:
    if name in _TLS13_SUITES:
        raise WebConfigError(
            f"tls_server_config.cipher_suites: {name} is a TLS 1.3 suite; TLS 1.3 suites are not configurable"
            " (as in Go), list TLS 1.2 suites only"
        )
    if name not in _CIPHER_SUITES:
        raise WebConfigError(
            f"tls_server_config.cipher_suites: unknown cipher {name!r} (Go's names, e.g. {next(iter(_CIPHER_SUITES))})"
        )
    return name


def _curve(name: str) -> str:
    if name not in _CURVES:
        raise WebConfigError(
            f"tls_server_config.curve_preferences: unknown curve {name!r} (one of {', '.join(_CURVES)})"
        )
    return name


def _parse_users(raw: dict[str, Any]) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"basic_auth_users.{user}: expected a bcrypt hash ($2a$/$2b$/$2y$...)")
        try:
            bcrypt.checkpw(b"", hashed.encode())
        except ValueError as exc:
            raise WebConfigError(f"basic_auth_users.{user}: invalid bcrypt hash ({exc})") from None
        users[str(user)] = hashed.encode()
    return users


# exporter-toolkit's validateHeaderConfig: only these headers, and these values where they are enumerations.
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}


def _check_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        if name not in _HEADERS:
            raise WebConfigError(
                f"http_server_config.headers: {name!r} can not be configured (one of {', '.join(_HEADERS)})"
            )
        allowed = _HEADERS[name]
        if allowed and value not in allowed:
            raise WebConfigError(
                f"http_server_config.headers.{name}: expected one of {', '.join(allowed)}, got {value!r}"
            )
        if "\r" in value or "\n" in value:
            raise WebConfigError(f"http_server_config.headers.{name}: a value must be one line")


def parse_web_config(data: Any, base: Path, source: Path | None = None) -> WebConfig:
    top = _expect_mapping(data, "web config")
    _check_keys(top, _TOP_KEYS, "web config")
    tls_raw = _expect_mapping(top.get("tls_server_config"), "tls_server_config")
    http_raw = _expect_mapping(top.get("http_server_config"), "http_server_config")
    _check_keys(http_raw, _HTTP_KEYS, "http_server_config")
    headers = {
        str(k): str(v) for k, v in _expect_mapping(http_raw.get("headers"), "http_server_config.headers").items()
    }
    _check_headers(headers)
    config = WebConfig(
        tls=_parse_tls(tls_raw, base) if tls_raw else None,
        basic_auth_users=_parse_users(_expect_mapping(top.get("basic_auth_users"), "basic_auth_users")),
        headers=headers,
        source=source,
    )
    if config.tls:
        build_ssl_context(config.tls)  # fail at start-up, not on the first TLS handshake
    return config


def load_web_config(path: str | Path | None) -> WebConfig:
    """Read and validate a web config file; no path means plain HTTP without auth."""
    if path is None or str(path) == "":
        return WebConfig()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise WebConfigError(f"cannot read web config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"web config {path} is not valid YAML: {exc}") from None
    try:
        return parse_web_config(data, path.parent, source=path)
    except WebConfigError as exc:
        raise WebConfigError(f"web config {path}: {exc}") from None


def build_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    if tls.max_version:
        ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    try:
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        else:
            _load_inline_cert(ctx, tls)
        if tls.client_ca_file:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise WebConfigError(f"tls_server_config: cannot load certificate/key: {exc}") from None
    _apply_ciphers(ctx, tls)
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        if tls.curve_preferences:
            openssl.set_groups(ctx, [_CURVES[name] for name in tls.curve_preferences])
    except openssl.OpenSSLUnavailable as exc:
        raise WebConfigError(f"tls_server_config.curve_preferences: cannot be applied here: {exc}") from None
    try:
        if tls.client_auth_type == "NoClientCert":
            ctx.verify_mode = ssl.CERT_NONE
        elif tls.client_auth_type == "VerifyClientCertIfGiven":
            ctx.verify_mode = ssl.CERT_OPTIONAL
        elif tls.client_auth_type == "RequireAndVerifyClientCert":
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            openssl.accept_unverified_client_certificates(ctx, required=tls.client_auth_type == "RequireAnyClientCert")
    except openssl.OpenSSLUnavailable as exc:
        raise WebConfigError(
            f"tls_server_config.client_auth_type: {tls.client_auth_type} cannot be applied here: {exc}"
        ) from None
    return ctx


def _apply_ciphers(ctx: ssl.SSLContext, tls: TLSConfig) -> None:
    """TLS 1.0-1.2 suites in the configured order; every one must really be enabled afterwards."""
    if not tls.cipher_suites:
        return
    names = [_CIPHER_SUITES[name] for name in tls.cipher_suites]
    try:
        ctx.set_ciphers(":".join(names))
    except ssl.SSLError:
        raise WebConfigError(
            "tls_server_config.cipher_suites: none of the suites is available in this OpenSSL build"
        ) from None
    enabled = {cipher["name"] for cipher in ctx.get_ciphers()}
    for go_name, name in zip(tls.cipher_suites, names, strict=True):
        if name not in enabled:
            raise WebConfigError(f"tls_server_config.cipher_suites: {go_name} is not available in this OpenSSL build")


def _load_inline_cert(ctx: ssl.SSLContext, tls: TLSConfig) -> None:
    import tempfile

    # ssl only loads chains from files; keep the inline PEM on disk only for the call.
    with (
        tempfile.NamedTemporaryFile("w", suffix=".pem") as cert,
        tempfile.NamedTemporaryFile("w", suffix=".pem") as key,
    ):
        cert.write(tls.cert_pem or (tls.cert_file.read_text() if tls.cert_file else ""))
        key.write(tls.key_pem or (tls.key_file.read_text() if tls.key_file else ""))
        cert.flush()
        key.flush()
        ctx.load_cert_chain(cert.name, key.name)


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
