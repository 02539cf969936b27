"""Credentials embedded in URLs are shown nowhere: metric labels, log lines, error messages."""

from __future__ import annotations

import json
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


PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE\nbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW==\n"
)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("HF_TOKEN hf_kLm3NoPqRsTuVwXyZaBcDeFgHiJkLmNo12 set", "hf_kLm3NoPqRs"),
        ("bot xoxb-2143425-98765432101-ZyXwVuTsRqPoNm ok", "xoxb-2143425"),
        ("legacy xoxp-1-2-3-abcdefabcdef", "xoxp-1-2"),
        ("aws AKIAIOSFODNN7EXAMPLE and ASIAY34FZKBOKMUTVV7A", "IOSFODNN7EXAMPLE"),
        (
            "Authorization eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "dozjgN",
        ),
        ("git glpat-xYz12AbC34dEf56GhI78jK clone", "glpat-xYz12"),
        (PEM + "-----END OPENSSH PRIVATE KEY-----\nafter", "b3BlbnNzaC1rZXkt"),
        (PEM[:70], "b3BlbnNzaC1rZXkt"),  # cut off before its END line (a capped excerpt)
        ('{"cmd": ' + json.dumps(PEM) + "}", "b3BlbnNzaC1rZXkt"),  # newlines escaped, as in JSON
        ("train.py --token tok123value --epochs 3", "tok123value"),
        ("mysqldump --password 'two words' db", "two words"),
        ("vault login --api-key=abc123def", "abc123def"),
        ("pip install -i https://alice:pw0rd@pypi.example/simple", "pw0rd"),
    ],
)
def test_redact_secret_shapes(text: str, secret: str) -> None:
    assert secret not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "vllm serve m --max-tokens 2048 --gres=gpu:8",
        "AKIA is a prefix; hf_ is too; xox",
        "srun -N2 python train.py --epochs 3",
        "XID 79 on GPU 3: the GPU fell off the bus",
    ],
)
def test_redact_leaves_ordinary_text(text: str) -> None:
    assert redact(text) == text


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
