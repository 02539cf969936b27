"""A corpus of secrets planted where a cluster leaks them, found nowhere the agent writes.

Planted in an alert's labels and annotations, in a real Slurm job (name, comment and command
line, as `scontrol show job` shows them), in Prometheus label values (tool results), and in
the model's own answer. Searched for in the findings API, the webhook and Slack posts, every
prompt the model server received, the agent's formatted log lines, and the CLI's output
(`gpu-watchdog findings`, `gpu-watchdog ask`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_webhook.config import PREFIX_ENV, AgentConfig
from agent_webhook.wiring import make_investigator
from gpu_watchdog_core.logs import LogfmtFormatter
from tests.agent.conftest import (  # noqa: F401 - fixtures
    TOKEN,
    FakeHTTP,
    ServiceThread,
    agent_config,
    fake_http,
    make_alert,
    make_payload,
    post_alerts,
    start_service,
    token_file,
)
from tests.agent_investigation.conftest import LiveCluster
from tests.fakes.openai_server import FakeOpenAIServer, Script, Turn, text, tool_calls
from tests.harness.processes import ProcessManager, wait_until
from tests.harness.slurm import SlurmCluster, SlurmUnavailable, start_cluster

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "gpu-watchdog")

HF = "hf_kLm3NoPqRsTuVwXyZaBcDeFgHiJkLmNo12"
HF_JOB = "hf_jobNAMEtoken0123456789abcdefXYZ"
SLACK_BOT = "xoxb-2143425-98765432101-ZyXwVuTsRqPoNmLkJiHgFe"
SLACK_USER = "xoxp-2143425-98765432101-AbCdEfGhIjKlMnOpQrStUv"
AKIA = "AKIAIOSFODNN7LEAK2XY"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJsZWFrIiwiaWF0IjoxNTE2MjM5MDIyfQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
GLPAT = "glpat-xYz12AbC34dEf56GhI78jK"
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjLEAKPEMBODY"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\nAoIBAQC7LEAKSECONDLINE==\n-----END RSA PRIVATE KEY-----"
FLAG_TOKEN = "tokLEAK3value"
FLAG_PASSWORD = "pwLEAK4value"
URL_PASSWORD = "urlpwLEAK5"
CORPUS = [HF, HF_JOB, SLACK_BOT, SLACK_USER, AKIA, JWT, GLPAT, PEM_BODY, FLAG_TOKEN, FLAG_PASSWORD, URL_PASSWORD]
EVERYTHING = (
    f"hf {HF}, slack {SLACK_BOT}, aws {AKIA}, jwt {JWT}, gitlab {GLPAT}, run `train --token {FLAG_TOKEN} "
    f"--password {FLAG_PASSWORD}`, pull https://alice:{URL_PASSWORD}@registry.example/v2, key:\n{PEM}"
)


@pytest.fixture
def slurm(session_procs: ProcessManager) -> Iterator[SlurmCluster]:
    try:
        cluster = start_cluster(session_procs, fake_nodes=1, with_slurmd=False)
    except SlurmUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def leaked(where: str, text: str) -> list[str]:
    return [f"{where}: {secret[:12]}..." for secret in CORPUS if secret in text]


def llm_script(job_id: str) -> Script:
    def script(body: dict[str, Any], index: int) -> Turn:
        if index == 0:
            return tool_calls(
                ("slurm_job", {"job_id": job_id}),
                ("prometheus_query", {"query": "test_secret_corpus"}),
                ("prometheus_query", {"query": f'up{{job="--password {FLAG_PASSWORD}"}}'}),
            )
        answer = {
            "severity": "critical",
            "summary": f"job {job_id} runs with --token {FLAG_TOKEN} and {HF}",
            "likely_cause": f"credentials {AKIA} in the job",
            "recommended_actions": [f"rotate {GLPAT}", f"revoke {SLACK_BOT}"],
            "diagnosis_markdown": EVERYTHING,
        }
        return text(json.dumps(answer))

    return script


def test_no_planted_secret_comes_out(
    live_cluster: LiveCluster,
    slurm: SlurmCluster,
    agent_config: Callable[..., AgentConfig],  # noqa: F811
    start_service: Callable[..., ServiceThread],  # noqa: F811
    fake_http: Callable[..., FakeHTTP],  # noqa: F811
    token_file: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))  # the agent's scontrol finds the private cluster
    script = slurm.root / "train.sh"
    script.write_text("#!/bin/sh\nsleep 600\n")
    script.chmod(0o755)
    job_id = slurm.run(
        [
            "sbatch",
            "--parsable",
            "-o",
            "/dev/null",
            "-J",
            f"train-{HF_JOB}",
            "--comment",
            f"pull https://alice:{URL_PASSWORD}@registry.example/v2 {AKIA}",
            str(script),
            "--token",
            FLAG_TOKEN,
            "--password",
            FLAG_PASSWORD,
        ]
    ).stdout.strip()
    assert FLAG_TOKEN in slurm.scontrol("show", "job", job_id, "--oneliner")  # Slurm shows it

    records = io.StringIO()
    handler = logging.StreamHandler(records)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    llm = FakeOpenAIServer(llm_script(job_id)).start()
    try:
        hook, slack = fake_http(), fake_http()
        config = agent_config(
            prometheus_url=live_cluster.prometheus.url,
            slurm={"mode": "scontrol"},
            llm={"base_url": llm.url, "model": "fake-model"},
            sinks=[{"type": "webhook", "url": hook.url}, {"type": "slack", "url": slack.url}],
        )
        svc = start_service(config, make_investigator(config))
        alert = make_alert("secret-fp", node=slurm.hostname, command=f"train --password {FLAG_PASSWORD}")
        alert["annotations"]["description"] = EVERYTHING
        alert["annotations"]["summary"] = f"XID on {slurm.hostname}, job token {HF}"
        post_alerts(svc.url, make_payload([alert]))
        posted = hook.wait_for(1, timeout=60) + slack.wait_for(1, timeout=60)
        findings = svc.findings()
        wait_until(lambda: "finding stored" in records.getvalue(), 10, what="the log line of the finding")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        llm.stop()

    evidence = findings[0]["evidence"]
    # The planted secrets did reach the agent: the job and the series were read, then redacted.
    job = next(e for e in evidence if e["tool"] == "slurm_job")
    assert f"JobId={job_id}" in job["excerpt"] and "--token <redacted>" in job["excerpt"]
    assert any("test_secret_corpus" in e["excerpt"] for e in evidence)
    assert findings[0]["llm"]["used"] and len(llm.requests) == 2

    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_") or k == PREFIX_ENV}
    cli = [
        subprocess.run(
            [CLI, "findings", "--server", svc.url, "--token-file", str(token_file), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        for extra in ([], ["--json"])
    ]
    assert all(r.returncode == 0 for r in cli), [r.stderr for r in cli]
    assert "secret-fp" in cli[1].stdout or findings[0]["id"] in cli[1].stdout

    ask_llm = FakeOpenAIServer(llm_script(job_id)).start()
    try:
        ask = subprocess.run(
            [
                CLI,
                "ask",
                f"what is wrong with node {slurm.hostname}?",
                "--prometheus-url",
                live_cluster.prometheus.url,
                "--slurm-mode",
                "scontrol",
                "--llm-base-url",
                ask_llm.url,
                "--llm-model",
                "fake-model",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env={**env, "SLURM_CONF": str(slurm.conf)},
            check=False,
        )
    finally:
        ask_llm.stop()
    assert ask.returncode == 0, ask.stderr
    assert "Answered by LLM (fake-model)" in ask.stdout

    found = [
        *leaked("findings API", json.dumps(findings)),
        *[leak for r in posted for leak in leaked(f"sink {r.path}", r.body.decode())],
        *leaked("prompts", json.dumps(llm.requests) + json.dumps(ask_llm.requests)),
        *leaked("logs", records.getvalue()),
        *leaked("findings CLI", cli[0].stdout + cli[0].stderr + cli[1].stdout + cli[1].stderr),
        *leaked("ask CLI", ask.stdout + ask.stderr),
    ]
    assert found == []
