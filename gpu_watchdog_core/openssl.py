"""Two server TLS settings Python's :mod:`ssl` cannot express, set on the context's own OpenSSL.

Go's ``RequestClientCert``/``RequireAnyClientCert`` ask for a client certificate and accept it
without verifying it; Python only has "verify against the CA store or fail the handshake". Go's
``CurvePreferences`` takes a list of groups; Python only has ``set_ecdh_curve`` (one curve).
Both are one OpenSSL call on the ``SSL_CTX`` behind an :class:`ssl.SSLContext`, so we make that
call through ctypes, against the very libssl the ``_ssl`` module is linked with (dlsym on the
extension's handle resolves its dependencies), and check the pointer before using it.

If any of that is not possible on this interpreter, :class:`OpenSSLUnavailable` is raised and
the web config refuses to start naming the key: a security setting is applied or refused,
never accepted and ignored.
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl

SSL_VERIFY_PEER = 0x01
SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
_SSL_CTRL_SET_GROUPS_LIST = 92

_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


@_VerifyCallback
def _accept_any_certificate(preverify_ok: int, store_ctx: int | None) -> int:
    # Go's RequireAnyClientCert: the certificate is not verified. It still must be well formed
    # (OpenSSL parses it before calling us) and the client must prove it holds the key
    # (CertificateVerify), which OpenSSL checks independently of this callback.
    return 1


class OpenSSLUnavailable(RuntimeError):
    """This interpreter's ssl module cannot be driven this way; the message says why."""


def _libssl() -> ctypes.CDLL:
    path = getattr(_ssl, "__file__", None)
    try:
        lib = ctypes.CDLL(path) if path else ctypes.CDLL(None)
        for name in ("SSL_CTX_set_verify", "SSL_CTX_get_verify_mode", "SSL_CTX_ctrl", "SSL_CTX_get_options"):
            getattr(lib, name)
    except (OSError, AttributeError) as exc:
        raise OpenSSLUnavailable(f"cannot reach libssl through the _ssl module: {exc}") from None
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    return lib


def _ssl_ctx(lib: ctypes.CDLL, ctx: ssl.SSLContext) -> int:
    """The SSL_CTX pointer: CPython's PySSLContext is PyObject_HEAD followed by ``SSL_CTX *ctx``."""
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer:
        raise OpenSSLUnavailable("cannot locate the SSL_CTX of an SSLContext")
    # Two independent fields must agree with what Python reports before we write through it.
    if lib.SSL_CTX_get_verify_mode(pointer) != _python_verify_bits(ctx) or lib.SSL_CTX_get_options(pointer) != int(
        ctx.options
    ):
        raise OpenSSLUnavailable("the SSLContext layout is not the one expected")
    return pointer


def _python_verify_bits(ctx: ssl.SSLContext) -> int:
    return {
        ssl.CERT_NONE: 0,
        ssl.CERT_OPTIONAL: SSL_VERIFY_PEER,
        ssl.CERT_REQUIRED: SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
    }[ctx.verify_mode]


def accept_unverified_client_certificates(ctx: ssl.SSLContext, *, required: bool) -> None:
    """Request (or require) a client certificate without verifying it, as Go does."""
    ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    lib = _libssl()
    pointer = _ssl_ctx(lib, ctx)
    lib.SSL_CTX_set_verify(pointer, _python_verify_bits(ctx), _accept_any_certificate)
    # Python keeps the callback when verify_mode is set again, so the setting cannot silently revert.


def set_groups(ctx: ssl.SSLContext, groups: list[str]) -> None:
    """Key exchange groups in preference order (OpenSSL names: P-256, X25519, ...)."""
    lib = _libssl()
    pointer = _ssl_ctx(lib, ctx)
    text = ctypes.create_string_buffer(":".join(groups).encode())
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.cast(text, ctypes.c_void_p)) != 1:
        raise OpenSSLUnavailable(f"OpenSSL refused the group list {':'.join(groups)}")
