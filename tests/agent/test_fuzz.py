"""Fuzzing POST /alerts over real HTTP: whatever arrives, the answer is a 2xx or a 4xx, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_webhook.config import build_config
from tests.agent.conftest import (
    TOKEN,
    ScriptedInvestigator,
    ServiceThread,
    make_alert,
    make_payload,
    post_alerts,
    request,
)
from tests.harness.processes import http_get

ACCEPTABLE = {202, 400, 413, 415}


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "token").write_text(TOKEN)
    config = build_config({"db": "agent.db", "token_file": "token", "max_body_bytes": 32 * 1024}, tmp)
    svc = ServiceThread(config, ScriptedInvestigator()).start()
    yield svc
    svc.stop()


any_text = st.text(max_size=30) | st.text(st.characters(categories=["Cs", "Lo", "Cc"]), max_size=5)
json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
rfc3339ish = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})\Z"
)
FIELDS = ["status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"]
TOP = ["version", "alerts", "receiver", "groupKey", "externalURL", "truncatedAlerts", "status", "groupLabels"]


@st.composite
def mutated_payloads(draw: Callable[..., Any]) -> Any:
    """A valid payload with some fields replaced by arbitrary JSON, dropped, or added."""
    alerts = [make_alert(draw(st.text(min_size=1, max_size=20)), node=draw(st.text(max_size=20))) for _ in range(2)]
    payload: dict[str, Any] = make_payload(alerts)
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(["top", "alert", "label"]))
        if target == "top":
            key = draw(st.sampled_from(TOP))
            if draw(st.booleans()):
                payload.pop(key, None)
            else:
                payload[key] = draw(json_value)
        elif target == "alert" and isinstance(payload.get("alerts"), list) and payload["alerts"]:
            alert = payload["alerts"][0]
            if isinstance(alert, dict):
                field = draw(st.sampled_from(FIELDS))
                alert[field] = draw(
                    rfc3339ish if field in ("startsAt", "endsAt") and draw(st.booleans()) else json_value
                )
        elif isinstance(payload.get("alerts"), list) and payload["alerts"] and isinstance(payload["alerts"][0], dict):
            labels = payload["alerts"][0].get("labels")
            if isinstance(labels, dict):
                labels[draw(st.text(max_size=10))] = draw(json_value)
    return payload


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=st.binary(max_size=2048))
def test_random_bytes(fuzz_service: ServiceThread, body: bytes) -> None:
    assert post_alerts(fuzz_service.url, body).status in ACCEPTABLE


@FUZZ
@given(value=json_value)
def test_random_json(fuzz_service: ServiceThread, value: Any) -> None:
    assert post_alerts(fuzz_service.url, json.dumps(value).encode()).status in ACCEPTABLE


@FUZZ
@given(payload=mutated_payloads())
def test_mutated_payloads(fuzz_service: ServiceThread, payload: Any) -> None:
    reply = post_alerts(fuzz_service.url, json.dumps(payload).encode())
    assert reply.status in ACCEPTABLE, reply.body
    if reply.status == 400:
        assert reply.json()["error"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content_type=st.text(max_size=40).filter(lambda s: "\n" not in s and "\r" not in s),
    authorization=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
)
def test_random_headers(fuzz_service: ServiceThread, content_type: str, authorization: str) -> None:
    body = json.dumps(make_payload([make_alert("fp")])).encode()
    try:
        reply = request(
            f"{fuzz_service.url}/alerts",
            "POST",
            body,
            {
                "Content-Type": content_type.encode("latin-1", "replace").decode("latin-1"),
                "Authorization": authorization,
            },
        )
    except ValueError:  # http.client refuses some header values itself: nothing was sent
        return
    assert reply.status in ACCEPTABLE | {401}


@FUZZ
@given(
    query=st.dictionaries(
        st.sampled_from(["limit", "cursor", "since", "status", "node", "alertname", "x"]),
        st.text(max_size=30),
        max_size=4,
    )
)
def test_random_findings_queries(fuzz_service: ServiceThread, query: dict[str, str]) -> None:
    from urllib.parse import urlencode

    reply = request(f"{fuzz_service.url}/findings?{urlencode(query)}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status in {200, 400}, reply.body


def test_still_healthy_after_fuzzing(fuzz_service: ServiceThread, tmp_path: Path) -> None:
    assert http_get(f"{fuzz_service.url}/healthz")[0] == 200
    metrics = http_get(f"{fuzz_service.url}/metrics")[1].decode()
    assert 'code="500"' not in metrics and 'code="503"' not in metrics


@FUZZ
@given(
    query=st.dictionaries(
        st.sampled_from(["limit", "cursor", "since", "status", "node", "alertname", "x"]),
        st.text(max_size=30),
        max_size=4,
    )
)
def test_random_incidents_queries(fuzz_service: ServiceThread, query: dict[str, str]) -> None:
    from urllib.parse import urlencode

    reply = request(f"{fuzz_service.url}/incidents?{urlencode(query)}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status in {200, 400}, reply.body


@FUZZ
@given(
    kind=st.sampled_from(["findings", "incidents"]),
    target=st.sampled_from(["known", "f-0", "i-0", "x"]) | st.text(max_size=20),
    verb=st.sampled_from(["ack", "unack"]),
    body=json_value | st.fixed_dictionaries({"comment": json_value, "by": json_value, "for": json_value}),
)
def test_random_acks(fuzz_service: ServiceThread, kind: str, target: str, verb: str, body: Any) -> None:
    """Acks of anything with anything: a 4xx with a reason (503: no alertmanager_url here), never a 500."""
    from urllib.parse import quote

    if target == "known":
        post_alerts(fuzz_service.url, make_payload([make_alert("fuzz-ack")]))
        fuzz_service.wait_idle()
        found = fuzz_service.findings()[0]
        target = found["incident_id"] if kind == "incidents" else found["id"]
    reply = request(
        f"{fuzz_service.url}/{kind}/{quote(target, safe='')}/{verb}",
        "POST",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert reply.status in {400, 404, 409, 503}, reply.body
    if reply.headers.get("content-type", "").startswith("application/json"):  # else the router's own 404
        assert reply.json()["error"]
