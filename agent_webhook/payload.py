"""Alertmanager webhook payloads (version 4): validate, then turn into :class:`Alert` values.

Everything here is untrusted input. Validation is strict about what the receiver relies on
(alerts, status, labels, fingerprint, startsAt) and lenient about everything else: newer
Alertmanager releases add fields (`notification_reason`, `routeLabels`) and those must not
turn into rejections. Every rejection carries a reason that names the offending field.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from agent_webhook.model import Alert, AlertStatus

# Alertmanager sends the zero time for alerts that have not ended.
_ZERO_TIME_PREFIX = "0001-01-01T00:00:00"
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_MAX_FINGERPRINT = 128
_MAX_LABEL_NAME = 256
_MAX_LABEL_VALUE = 16_384
_MAX_LABELS = 256
# Characters a label must not carry: NUL (truncates C strings: Slurm, SQLite tools, terminals) and
# the Unicode bidi controls, which make a label read differently from what it is (Trojan Source).
_FORBIDDEN_IN_LABELS = re.compile("[\x00\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CHAR_NAMES = {"\x00": "NUL"}


class PayloadError(ValueError):
    """The payload is not a usable Alertmanager webhook; the message says why (sent as a 400)."""


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: expected an object, got {_type_name(value)}")
    return value


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _valid_text(value: str, where: str) -> str:
    """JSON can carry lone surrogates (\\ud800) that are not text; SQLite and sinks cannot store them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(f"{where}: contains invalid Unicode (a lone surrogate escape)") from None
    return value


def _check_label_chars(labels: dict[str, str], where: str) -> None:
    for key, value in labels.items():
        for text, place in ((key, f"{where}: a name"), (value, f"{where}.{key[:64]}")):
            bad = _FORBIDDEN_IN_LABELS.search(text)
            if bad:
                char = bad.group()
                name = _CHAR_NAMES.get(char, f"the bidi control U+{ord(char):04X}")
                raise PayloadError(f"{place} contains {name}, which labels must not carry")


def _string_map(value: Any, where: str, *, required: bool) -> dict[str, str]:
    if value is None and not required:
        return {}
    raw = _mapping(value, where)
    if len(raw) > _MAX_LABELS:
        raise PayloadError(f"{where}: more than {_MAX_LABELS} entries")
    out: dict[str, str] = {}
    for key, item in raw.items():
        if not isinstance(item, str):
            raise PayloadError(f"{where}.{key[:64]}: expected a string, got {_type_name(item)}")
        if not key or len(key) > _MAX_LABEL_NAME:
            raise PayloadError(f"{where}: a name is empty or longer than {_MAX_LABEL_NAME} characters")
        if len(item) > _MAX_LABEL_VALUE:
            raise PayloadError(f"{where}.{key[:64]}: value longer than {_MAX_LABEL_VALUE} characters")
        out[_valid_text(key, where)] = _valid_text(item, f"{where}.{key[:64]}")
    return out


def _string(value: Any, where: str, *, required: bool = True, default: str = "") -> str:
    if value is None and not required:
        return default
    if not isinstance(value, str):
        raise PayloadError(f"{where}: expected a string, got {_type_name(value)}")
    return _valid_text(value, where)


def parse_time(value: str, where: str) -> datetime:
    """An RFC 3339 timestamp as Alertmanager writes it (Go's nanosecond fractions included)."""
    if not _RFC3339.match(value):
        raise PayloadError(f"{where}: {value[:40]!r} is not an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(value)
        parsed.astimezone(UTC).timestamp()  # out-of-range instants (year 9999 minus an offset) fail here
    except (ValueError, OverflowError):
        raise PayloadError(f"{where}: {value[:40]!r} is not a valid date and time") from None
    return parsed


def canonical_time(value: str, where: str) -> str:
    """One spelling per instant, so HA peers that format a time differently still deduplicate."""
    return parse_time(value, where).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_payload(body: bytes) -> list[Alert]:
    """Validate a webhook body and return its alerts; :class:`PayloadError` with a reason otherwise."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise PayloadError("body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise PayloadError("malformed JSON: nested too deeply") from None
    except ValueError as exc:
        # Python refuses to convert integers of more than 4,300 digits (CVE-2020-10735 guard).
        raise PayloadError(f"malformed JSON: a number is too long ({str(exc)[:80]})") from None
    top = _mapping(data, "payload")
    version = top.get("version")
    if version is not None and version != "4":
        raise PayloadError(f'version: only webhook payload version "4" is supported, got {str(version)[:20]!r}')
    alerts_raw = top.get("alerts")
    if not isinstance(alerts_raw, list):
        raise PayloadError(f"alerts: expected an array, got {_type_name(alerts_raw)}")
    receiver = _string(top.get("receiver"), "receiver", required=False)
    group_key = _string(top.get("groupKey"), "groupKey", required=False)
    external_url = _string(top.get("externalURL"), "externalURL", required=False)
    truncated = top.get("truncatedAlerts", 0)
    if truncated is not None and (not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0):
        raise PayloadError("truncatedAlerts: expected a non-negative integer")
    return [_parse_alert(raw, f"alerts[{i}]", receiver, group_key, external_url) for i, raw in enumerate(alerts_raw)]


def _parse_alert(raw: Any, where: str, receiver: str, group_key: str, external_url: str) -> Alert:
    item = _mapping(raw, where)
    status = item.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError(f'{where}.status: expected "firing" or "resolved", got {str(status)[:20]!r}')
    fingerprint = _string(item.get("fingerprint"), f"{where}.fingerprint")
    if not fingerprint or len(fingerprint) > _MAX_FINGERPRINT:
        raise PayloadError(f"{where}.fingerprint: must be 1 to {_MAX_FINGERPRINT} characters")
    labels = _string_map(item.get("labels"), f"{where}.labels", required=True)
    _check_label_chars(labels, f"{where}.labels")
    if not labels.get("alertname"):
        raise PayloadError(f"{where}.labels.alertname: missing; every Prometheus alert has one")
    annotations = _string_map(item.get("annotations"), f"{where}.annotations", required=False)
    starts_at = _string(item.get("startsAt"), f"{where}.startsAt")
    parse_time(starts_at, f"{where}.startsAt")
    ends_raw = _string(item.get("endsAt"), f"{where}.endsAt", required=False)
    ends_at: str | None = None
    if ends_raw and not ends_raw.startswith(_ZERO_TIME_PREFIX):
        parse_time(ends_raw, f"{where}.endsAt")
        ends_at = ends_raw
    alert_status: AlertStatus = "firing" if status == "firing" else "resolved"
    return Alert(
        fingerprint=fingerprint,
        status=alert_status,
        labels=labels,
        annotations=annotations,
        starts_at=starts_at,
        ends_at=ends_at,
        generator_url=_string(item.get("generatorURL"), f"{where}.generatorURL", required=False),
        receiver=receiver,
        group_key=group_key,
        external_url=external_url,
    )
