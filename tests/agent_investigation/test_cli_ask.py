"""`gpu-watchdog ask` as an operator runs it: a real process against the real Prometheus."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_webhook.config import PREFIX_ENV
from tests.agent_investigation.conftest import LiveCluster
from tests.fakes.openai_server import FakeOpenAIServer, text, tool_calls

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "gpu-watchdog")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # GPU_WATCHDOG_PREFIX stays: tests/conftest.py points it away from a deployment on this host.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_") or k == PREFIX_ENV}
    full_env.update(env or {})
    return subprocess.run([CLI, "ask", *args], capture_output=True, text=True, timeout=60, env=full_env, check=False)


def test_markdown_answer(live_cluster: LiveCluster) -> None:
    result = run("why is node gpu-e07 drained?", "--prometheus-url", live_cluster.prometheus.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# SlurmNodeDrained on node gpu-e07")
    assert "Kill task failed" in result.stdout and "deterministic triage" in result.stdout
    assert result.stderr == ""  # not a terminal: no progress lines


def test_json_answer_from_env(live_cluster: LiveCluster) -> None:
    result = run(
        "what is wrong with gpu-e03?", "--json", env={"GPU_WATCHDOG_PROMETHEUS_URL": live_cluster.prometheus.url}
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["triage_rule"] == "policy:row_remap_failure" and answer["llm_used"] is False
    assert answer["question"] == "what is wrong with gpu-e03?" and answer["evidence"]


def test_llm_from_config_file(live_cluster: LiveCluster, tmp_path: Path) -> None:
    answer = {
        "severity": "critical",
        "summary": "gpu-e01 lost GPU 3",
        "likely_cause": "XID 79",
        "recommended_actions": ["Drain gpu-e01"],
        "diagnosis_markdown": "GPU 3 fell off the bus.",
    }
    with FakeOpenAIServer([tool_calls(("gpu_detail", {"node": "gpu-e01"})), text(json.dumps(answer))]) as llm:
        config = tmp_path / "agent.yml"
        config.write_text(
            f"prometheus_url: {live_cluster.prometheus.url}\nllm:\n  base_url: {llm.base_url}/v1\n  model: fake-model\n"
        )
        result = run("is gpu-e01 healthy?", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# gpu-e01 lost GPU 3") and "LLM (fake-model)" in result.stdout


def test_progress_on_a_terminal(live_cluster: LiveCluster) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [CLI, "ask", "why is node gpu-e08 drained?", "--prometheus-url", live_cluster.prometheus.url],
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    stdout, _ = proc.communicate(timeout=60)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    progress = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "investigating" in progress and "-> slurm_node node=gpu-e08" in progress
    assert "XID 79" in stdout


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run("anything", "--llm-base-url", "http://127.0.0.1:1/v1")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: llm.model is required when llm.base_url is set (the model name vLLM serves)"
    )


def test_unknown_node_is_called_out(live_cluster: LiveCluster) -> None:
    result = run("what about node gpu-nope-7?", "--prometheus-url", live_cluster.prometheus.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# no series carry node gpu-nope-7")


def test_config_from_env_and_the_agents_findings(live_cluster: LiveCluster, tmp_path: Path) -> None:
    """GPU_WATCHDOG_CONFIG (or the deployed agent.yml) gives ask its URLs; its listen and token
    lead to the agent's findings, which are left out, with a note, when the agent is down."""
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    config = tmp_path / "agent.yml"
    config.write_text(f"prometheus_url: {live_cluster.prometheus.url}\nlisten: 127.0.0.1:9\ntoken_file: {token}\n")
    result = run("what is wrong with gpu-e03?", "--json", env={"GPU_WATCHDOG_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["triage_rule"] == "policy:row_remap_failure" and answer["degraded"] == []
    findings = [e for e in answer["evidence"] if e["tool"] == "agent_findings"]
    assert findings and not findings[0]["ok"] and "cannot reach http://127.0.0.1:9" in findings[0]["excerpt"]
    # A flag wins over the file.
    result = run(
        "what is wrong with gpu-e03?",
        "--prometheus-url",
        "http://127.0.0.1:9",
        env={"GPU_WATCHDOG_CONFIG": str(config)},
    )
    assert result.returncode == 0 and "prometheus unavailable" in result.stdout.lower()
    config.write_text("promethues_url: http://127.0.0.1:9\n")
    result = run("is gpu-e03 ok?", env={"GPU_WATCHDOG_CONFIG": str(config)})
    assert result.returncode == 2 and "promethues_url" in result.stderr and "Traceback" not in result.stderr


def test_timeout_shortens_the_llm_budget_and_keeps_the_triage(live_cluster: LiveCluster) -> None:
    """A model server that never answers in time: with --timeout 6 ask answers within it, from the
    triage, instead of waiting out the configured 180 s budget."""
    from tests.fakes.openai_server import delay

    with FakeOpenAIServer([delay(30, text("{}"))]) as llm:
        started = time.monotonic()
        result = run(
            "why is node gpu-e07 drained?",
            "--prometheus-url",
            live_cluster.prometheus.url,
            "--llm-base-url",
            llm.url,
            "--llm-model",
            "fake-model",
            "--timeout",
            "6",
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 9, elapsed
    assert result.stdout.startswith("# SlurmNodeDrained on node gpu-e07")
    assert "LLM was not reachable" in result.stdout and "llm unavailable" in result.stdout


def test_timeout_is_validated(live_cluster: LiveCluster) -> None:
    result = run("why is node gpu-e07 drained?", "--prometheus-url", live_cluster.prometheus.url, "--timeout", "0")
    assert result.returncode == 2 and "--timeout" in result.stderr and "Traceback" not in result.stderr
