"""Alertmanager webhook payload validation: what is accepted, and the reason for what is not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_webhook.payload import PayloadError, canonical_time, parse_payload
from tests.agent.conftest import make_alert, make_payload, sample


def _parse(data: Any) -> Any:
    return parse_payload(json.dumps(data).encode())


def test_reference_sample_mixed_group() -> None:
    alerts = _parse(sample("mixed-group.json"))
    assert [a.status for a in alerts] == ["firing", "resolved"]
    first = alerts[0]
    assert first.fingerprint == "8c1d3b2f6e7a9d04"
    assert (first.alertname, first.node, first.gpu) == ("GPUXidError", "gpu-worker-1", "3")
    assert first.ends_at is None  # the zero time means "still firing"
    assert alerts[1].ends_at == "2026-11-22T23:40:52.000Z"
    assert first.receiver == "gpu\\-watchdog\\-agent"
    assert "g0.expr" in first.generator_url


def test_truncated_payload_with_unknown_fields_is_accepted() -> None:
    alerts = _parse(sample("truncated.json"))
    assert len(alerts) == 2


def test_grouped_payload_with_nanosecond_times() -> None:
    alerts = _parse(sample("grouped.json"))
    assert len({a.dedup_key for a in alerts}) == 4


def test_canonical_time_makes_equal_instants_equal() -> None:
    assert canonical_time("2026-11-22T23:41:07.512Z", "t") == canonical_time("2026-11-23T00:41:07.512000+01:00", "t")
    assert canonical_time("2026-11-22T23:41:07Z", "t") == "2026-11-22T23:41:07.000000Z"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p.update(alerts="nope"), "alerts: expected an array"),
        (lambda p: p.pop("alerts"), "alerts: expected an array, got null"),
        (lambda p: p.update(version="3"), "version"),
        (lambda p: p["alerts"][0].update(status="pending"), "alerts[0].status"),
        (lambda p: p["alerts"][0].pop("fingerprint"), "alerts[0].fingerprint"),
        (lambda p: p["alerts"][0].update(fingerprint=""), "alerts[0].fingerprint"),
        (lambda p: p["alerts"][0].update(labels=[1]), "alerts[0].labels: expected an object"),
        (lambda p: p["alerts"][0]["labels"].update(node=3), "alerts[0].labels.node: expected a string"),
        (lambda p: p["alerts"][0].update(startsAt="yesterday"), "alerts[0].startsAt"),
        (lambda p: p["alerts"][0].update(startsAt="2026-13-45T99:00:00Z"), "alerts[0].startsAt"),
        (lambda p: p["alerts"][0].update(startsAt="9999-12-31T23:59:59-23:59"), "alerts[0].startsAt"),
        (lambda p: p["alerts"][0].update(startsAt="0001-01-01T00:00:00+23:59"), "alerts[0].startsAt"),
        (lambda p: p["alerts"][0].update(startsAt="2026-01-01T00:00:00+99:00"), "alerts[0].startsAt"),
        (lambda p: p["alerts"][0].update(endsAt=5), "alerts[0].endsAt"),
        (lambda p: p["alerts"][0].update(annotations="x"), "alerts[0].annotations"),
        (lambda p: p.update(truncatedAlerts=-1), "truncatedAlerts"),
        (lambda p: p.update(receiver=["x"]), "receiver"),
        (lambda p: p["alerts"][0].update(fingerprint="\udfff"), "alerts[0].fingerprint: contains invalid Unicode"),
        (lambda p: p["alerts"][0]["labels"].update({"\ud800": "x"}), "alerts[0].labels: contains invalid Unicode"),
        (lambda p: p["alerts"][0]["annotations"].update(x="\ud800"), "alerts[0].annotations.x: contains invalid"),
    ],
)
def test_schema_errors_name_the_field(mutate: Any, reason: str) -> None:
    payload = make_payload([make_alert("fp1")])
    mutate(payload)
    with pytest.raises(PayloadError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        _parse(payload)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "malformed JSON"),
        (b"{", "malformed JSON"),
        (b"\xff\xfe", "UTF-8|malformed"),
        (b"[]", "payload: expected an object"),
        (b"[" * 100_000, "malformed JSON"),
    ],
)
def test_malformed_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_payload(body)
