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
setting must not silently turn the setting off.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import threading
from base64 import b64decode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporters.common.sections import mapping_section, reject_unknown


class WebConfigError(ValueError):
    """The web config file is unreadable or invalid; the message says which key and why."""


_CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
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


@dataclass
class WebConfig:
    tls: TLSConfig | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    source: Path | None = None
    _auth_cache: dict[bytes, bool] = field(default_factory=dict, repr=False)
    _auth_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def auth_required(self) -> bool:
        return bool(self.basic_auth_users)

    def ssl_context(self) -> ssl.SSLContext | None:
        return build_ssl_context(self.tls) if self.tls else None

    def cached_authorization(self, header: str | None) -> bool | None:
        """The answer when it needs no bcrypt work (auth off, malformed, or seen before), else None."""
        if not self.basic_auth_users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            _, _, key = _split_basic(header)
        except ValueError:
            return False
        with self._auth_lock:
            return self._auth_cache.get(key)

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
        ok = bcrypt.checkpw(password.encode(), target) and hashed is not None
        with self._auth_lock:
            if len(self._auth_cache) > 1024:
                self._auth_cache.clear()
            self._auth_cache[key] = ok
        return ok


def _split_basic(header: str) -> tuple[str, str, bytes]:
    """(user, password, cache key) from a Basic Authorization header; ValueError if malformed."""
    try:
        user, sep, password = b64decode(header[6:], validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("malformed basic auth header") from None
    if not sep:
        raise ValueError("malformed basic auth header")
    return user, password, hashlib.sha256(f"{user}\0{password}".encode()).digest()


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
    if client_auth not in _CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"tls_server_config.client_auth_type: {client_auth!r} is not one of {', '.join(_CLIENT_AUTH_TYPES)}"
        )
    ca = (
        _resolve(base, raw["client_ca_file"], "tls_server_config.client_ca_file") if raw.get("client_ca_file") else None
    )
    if client_auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and ca is None:
        raise WebConfigError(f"tls_server_config: client_auth_type {client_auth} needs client_ca_file")
    for key in ("min_version", "max_version"):
        if raw.get(key) is not None and raw[key] not in _TLS_VERSIONS:
            raise WebConfigError(f"tls_server_config.{key}: {raw[key]!r} is not one of {', '.join(_TLS_VERSIONS)}")
    for path in (cert_file, key_file, ca):
        if path is not None and not path.is_file():
            raise WebConfigError(f"tls_server_config: file {path} does not exist")
    return TLSConfig(
        cert_file=cert_file,
        key_file=key_file,
        cert_pem=cert_pem,
        key_pem=key_pem,
        client_auth_type=client_auth,
        client_ca_file=ca,
        min_version=raw.get("min_version") or "TLS12",
        max_version=raw.get("max_version"),
    )


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


def parse_web_config(data: Any, base: Path, source: Path | None = None) -> WebConfig:
    top = _expect_mapping(data, "web config")
    _check_keys(top, _TOP_KEYS, "web config")
    tls_raw = _expect_mapping(top.get("tls_server_config"), "tls_server_config")
    http_raw = _expect_mapping(top.get("http_server_config"), "http_server_config")
    _check_keys(http_raw, _HTTP_KEYS, "http_server_config")
    headers = {
        str(k): str(v) for k, v in _expect_mapping(http_raw.get("headers"), "http_server_config.headers").items()
    }
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
    ctx.verify_mode = _CLIENT_AUTH_TYPES[tls.client_auth_type]
    return ctx


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
