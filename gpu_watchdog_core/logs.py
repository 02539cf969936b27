"""Structured logging (logfmt or JSON, one event per line) with secrets redacted on the way out.

Every exporter and the agent log through this, so `extra={...}` fields become keys and no
token, password or credential-bearing URL reaches a log file.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

_SECRET_KEY = re.compile(r"(?i)(token|secret|password|passwd|api[_-]?key|authorization|credential|munge[_-]?key)")
_REDACTIONS = [
    # user:password@ in URLs, and a bare token@ (https://TOKEN@host)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@]+):([^/\s@]+)@"), r"\1\2:<redacted>@"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@<>]{8,})@"), r"\1<redacted>@"),
    # Authorization headers and bearer tokens
    (re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{8,}"), r"\1 <redacted>"),
    # key=value / key: value pairs whose key names a secret
    (
        re.compile(
            r"(?i)\b([a-z0-9_.-]*(?:token|secret|password|passwd|api[_-]?key|apikey|credential)[a-z0-9_.-]*)"
            r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&\"'}]+)"
        ),
        r"\1\2<redacted>",
    ),
    # well-known key shapes: OpenAI-style, RunPod, Slack webhook paths, GitHub tokens
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "<redacted>"),
    (re.compile(r"\brpa_[A-Za-z0-9]{16,}"), "<redacted>"),
    (re.compile(r"(hooks\.slack\.com/services/)[A-Za-z0-9/]+"), r"\1<redacted>"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), "<redacted>"),
    # Hugging Face, Slack (xoxb-, xoxp-, xoxa-, ...), GitLab personal access tokens, AWS key ids
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "<redacted>"),
    (re.compile(r"\bxox[a-z]-[A-Za-z0-9-]{8,}"), "<redacted>"),
    (re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), "<redacted>"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "<redacted>"),
    # JWTs: base64url header (always `{"...` = eyJ), payload and signature
    (re.compile(r"\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}"), "<redacted>"),
    # PEM private keys, whole or cut off before their END line (a capped excerpt), raw or with the
    # newlines escaped as in JSON
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----(?:[A-Za-z0-9+/=:,\s-]|\\[nr])*?"
            r"(?:-----END \1PRIVATE KEY-----|(?=[^A-Za-z0-9+/=:,\s\\-])|$)"
        ),
        "<redacted private key>",
    ),
    # secrets as command-line flags: --token VALUE, --password=VALUE, --api-key 'VALUE'
    (
        re.compile(
            r"(?i)(--?[a-z0-9_.-]*(?:token(?!s)|secret|password|passwd|api[_-]?key|apikey|credential)[a-z0-9_.-]*)"
            r"(\s+|=)(\"[^\"]*\"|'[^']*'|[^\s\"']+)"
        ),
        r"\1\2<redacted>",
    ),
]


# Everything between "scheme://" and the last "@" of the authority, as urllib.parse splits it.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#]*@")


def has_userinfo(url: str) -> bool:
    return bool(_USERINFO.search(url))


def strip_userinfo(url: str) -> str:
    """The URL with no `user:password@`/`token@`: for every place a URL is shown (labels, errors)."""
    return _USERINFO.sub(r"\1", url)


def redact(text: str) -> str:
    """Remove credentials from free text (URLs with passwords, bearer tokens, key=value secrets)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key):
        return "<redacted>"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(key, v) for v in value]
    return value


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": redact(record.getMessage()),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = redact_value(key, value)
    if record.exc_info:
        fields["exc"] = redact(logging.Formatter().formatException(record.exc_info))
    return fields


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if text == "" or any(c in text for c in ' ="\n\t'):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per scrape: useful at debug, noise otherwise.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
