"""exporter-toolkit web config parsing: valid files load, every mistake is a clear error."""

from __future__ import annotations

from base64 import b64encode
from pathlib import Path

import bcrypt
import pytest
import trustme

from gpu_watchdog_core.webconfig import WebConfigError, load_web_config

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


def _basic(user: str, password: str) -> str:
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def test_no_file_means_plain_http() -> None:
    cfg = load_web_config(None)
    assert cfg.tls is None
    assert not cfg.auth_required
    assert cfg.check_authorization(None)


def test_basic_auth_users(tmp_path: Path) -> None:
    cfg = load_web_config(write(tmp_path, f"basic_auth_users:\n  alice: '{HASH}'\n"))
    assert cfg.check_authorization(_basic("alice", "s3cret"))
    assert cfg.cached_authorization(_basic("alice", "s3cret")) is True  # second check is free
    assert not cfg.check_authorization(_basic("alice", "wrong"))
    assert not cfg.check_authorization(_basic("mallory", "s3cret"))
    assert not cfg.check_authorization("Basic !!!notbase64")
    assert not cfg.check_authorization("Bearer abc")
    assert not cfg.check_authorization(None)


def test_2y_hashes_from_htpasswd_are_accepted(tmp_path: Path) -> None:
    # htpasswd -B writes $2y$; exporter-toolkit's docs use it.
    cfg = load_web_config(write(tmp_path, "basic_auth_users:\n  bob: '" + HASH.replace("$2b$", "$2y$", 1) + "'\n"))
    assert cfg.check_authorization(_basic("bob", "s3cret"))


def test_tls_paths_resolve_relative_to_the_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cfg = load_web_config(
        write(
            tmp_path,
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  min_version: TLS12\n",
        )
    )
    assert cfg.tls is not None and cfg.tls.cert_file == tmp_path / "cert.pem"
    assert cfg.ssl_context() is not None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tls_server_config: [1, 2]\n", "expected a mapping"),
        ("basic_auth_user:\n  a: b\n", "unknown field(s) basic_auth_user"),
        ("tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n", "does not exist"),
        ("tls_server_config:\n  cert_file: a.pem\n", "both a certificate"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n", "client_auth_type"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS9\n", "min_version"),
        ("basic_auth_users:\n  alice: plaintext\n", "expected a bcrypt hash"),
        ("basic_auth_users:\n  alice: '$2b$10$tooshort'\n", "invalid bcrypt hash"),
        ("http_server_config:\n  http3: true\n", "unknown field(s) http3"),
        # YAML keys need not be strings: listed, not a TypeError from sorting mixed types.
        ("1: x\nbasic_auth_user: {}\n", "unknown field(s) 1, basic_auth_user"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_configs_fail_with_a_reason(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(WebConfigError) as err:
        load_web_config(write(tmp_path, text))
    assert fragment in str(err.value)
    assert str(tmp_path / "web.yml") in str(err.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="cannot read web config"):
        load_web_config(tmp_path / "missing.yml")


def test_bad_certificate_content_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a cert")
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(WebConfigError, match="cannot load certificate"):
        load_web_config(write(tmp_path, "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"))


def test_basic_auth_edge_cases_are_refusals_not_errors(tmp_path: Path) -> None:
    cfg = load_web_config(write(tmp_path, f"basic_auth_users:\n  alice: '{HASH}'\n"))
    assert cfg.check_authorization("basic " + _basic("alice", "s3cret")[6:])  # scheme is case-insensitive
    assert not cfg.check_authorization(_basic("alice", "s" * 73))  # bcrypt's 72-byte limit: 401, not ValueError
    assert not cfg.check_authorization("Basic \udcff\udcfe")  # non-UTF-8 bytes, surrogate-escaped by aiohttp
    assert not cfg.check_authorization("Basic " + b64encode(b"\xff\xfe:pw").decode())


async def test_bcrypt_checks_run_one_at_a_time_and_a_flood_is_refused(tmp_path: Path) -> None:
    import asyncio

    from gpu_watchdog_core.webconfig import AuthBusy

    slow = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=8)).decode()
    cfg = load_web_config(write(tmp_path, f"basic_auth_users:\n  alice: '{slow}'\n"))
    results = await asyncio.gather(
        *(cfg.authorize(_basic("alice", f"wrong{i}")) for i in range(100)), return_exceptions=True
    )
    busy = [r for r in results if isinstance(r, AuthBusy)]
    assert len(busy) == 100 - 64  # the queue is bounded; the rest are answered 429 at once
    assert all(r is False for r in results if not isinstance(r, AuthBusy))
    assert cfg._bcrypt_pool is not None and cfg._bcrypt_pool._max_workers == 1
