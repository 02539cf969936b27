"""Credentials embedded in URLs are shown nowhere: metric labels, log lines, error messages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpu_watchdog_core.logs import has_userinfo, redact, strip_userinfo
from tests.fakes.runpod_api import FakeRunPod
from tests.harness.processes import ProcessManager, http_get
from tests.runpod.exporter import start_runpod_exporter


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:hunter2@api.example/graphql", "https://api.example/graphql"),
        ("https://ghp_0123456789abcdefghijkl@api.example", "https://api.example"),
        ("http://a:b@c@host:8080/x?y=z@w", "http://host:8080/x?y=z@w"),  # urllib splits at the last @
        ("https://api.example/path@v1", "https://api.example/path@v1"),
        ("not a url", "not a url"),
    ],
)
def test_strip_userinfo(url: str, shown: str) -> None:
    assert strip_userinfo(url) == shown
    assert has_userinfo(url) == (url != shown)


def test_logs_redact_a_bare_token_before_the_host() -> None:
    assert "ghp_" not in redact("POST https://ghp_0123456789abcdefghijkl@api.example failed")
    assert redact("GET https://admin:hunter2@db/x") == "GET https://admin:<redacted>@db/x"


@pytest.fixture
def fake_runpod() -> Iterator[FakeRunPod]:
    server = FakeRunPod().start()
    try:
        yield server
    finally:
        server.stop()


def test_runpod_info_label_has_no_credentials(procs: ProcessManager, fake_runpod: FakeRunPod) -> None:
    url = fake_runpod.url.replace("http://", "http://ops:hunter2@")
    proc, base = start_runpod_exporter(procs, url)
    status, body = http_get(f"{base}/metrics")
    assert status == 200
    info = [line for line in body.decode().splitlines() if line.startswith("runpod_exporter_info")]
    assert info and f'api_url="{fake_runpod.url}"' in info[0], info
    assert b"hunter2" not in body
    assert "hunter2" not in proc.log_tail()
