from __future__ import annotations

from pathlib import Path

import pytest

from agent_webhook.config import ConfigError, load_investigation
from agent_webhook.investigation import InvestigationConfig


def test_defaults_without_anything() -> None:
    cfg = InvestigationConfig.from_mapping({})
    assert cfg.prometheus_url is None
    assert not cfg.llm.enabled
    assert cfg.slurm.mode == "metrics"


def test_full_mapping(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-test-key-file\n")
    cfg = InvestigationConfig.from_mapping(
        {
            "prometheus_url": "http://127.0.0.1:9090/",
            "alertmanager_url": "http://127.0.0.1:9093",
            "llm": {
                "base_url": "http://127.0.0.1:8000/v1",
                "model": "qwen",
                "api_key_file": str(key),
                "timeout_seconds": 30,
                "max_steps": 4,
                "budget_seconds": 90,
                "temperature": 0.2,
            },
            "slurm": {"mode": "scontrol", "bin_dir": str(tmp_path)},
            "allowed_urls": ["http://127.0.0.1:9999/api"],
            "listen": "ignored: belongs to the service",
        }
    )
    assert cfg.prometheus_url == "http://127.0.0.1:9090"
    assert cfg.llm.enabled and cfg.llm.max_steps == 4 and cfg.llm.api_key() == "sk-test-key-file"
    assert cfg.slurm.mode == "scontrol"
    assert cfg.allowed_urls == ("http://127.0.0.1:9999/api",)


def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_KEY", "abc")
    cfg = InvestigationConfig.from_mapping(
        {"llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "MY_LLM_KEY"}}
    )
    assert cfg.llm.api_key() == "abc"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"prometheus_url": "ftp://x"}, "prometheus_url must be an http"),
        ({"prometheus_url": "http://127.0.0.1:9090/?q=1"}, "query or fragment"),
        ({"prometheus_url": 5}, "prometheus_url must be a URL string"),
        ({"llm": {"base_url": "http://127.0.0.1:8000/v1"}}, "llm.model is required"),
        ({"llm": {"base_url": "http://h/v1", "model": "m", "max_steps": 0}}, "llm.max_steps must be between"),
        ({"llm": {"base_url": "http://h/v1", "model": "m", "max_steps": 2.5}}, "llm.max_steps must be an integer"),
        ({"llm": {"timeout_seconds": "fast"}}, "llm.timeout_seconds must be a number"),
        ({"llm": {"temperature": True}}, "llm.temperature must be a number"),
        ({"llm": "yes"}, "llm must be a mapping"),
        ({"slurm": {"mode": "pyslurm"}}, "slurm.mode must be one of metrics, scontrol"),
        ({"slurm": {"bin_dir": "/nonexistent/bin"}}, "slurm.bin_dir: /nonexistent/bin is not a directory"),
        ({"allowed_urls": "http://x"}, "allowed_urls must be a list"),
        ({"llm": {"max_step": 3}}, r"llm: unknown key\(s\) max_step; known: "),
        ({"slurm": {"bindir": "/usr/bin"}}, r"slurm: unknown key\(s\) bindir"),
        ({"allowed_urls": ["file:///etc/passwd"]}, "allowed_urls entry must be an http"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InvestigationConfig.from_mapping(raw)


def test_credentials_in_bad_url_are_redacted() -> None:
    with pytest.raises(ValueError) as info:
        InvestigationConfig.from_mapping({"prometheus_url": "gopher://admin:hunter2@prom"})
    assert "hunter2" not in str(info.value)


def test_config_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "agent.yml"
    path.write_text("prometheus_url: http://127.0.0.1:1\nllm:\n  model: a\n  max_steps: 3\ntoken_file: /nonexistent\n")
    # The agent's own settings (and secrets: the token file is never read here) are left out.
    raw = load_investigation(path, {"llm_base_url": "http://127.0.0.1:2/v1", "llm_model": "b", "slurm_mode": None})
    assert "token_file" not in raw
    cfg = InvestigationConfig.from_mapping(raw)
    assert cfg.llm.base_url == "http://127.0.0.1:2/v1" and cfg.llm.model == "b" and cfg.llm.max_steps == 3
    assert cfg.prometheus_url == "http://127.0.0.1:1"
    assert (
        InvestigationConfig.from_mapping(load_investigation(path, {"slurm_mode": "scontrol"})).slurm.mode == "scontrol"
    )
    bad = tmp_path / "bad.yml"
    bad.write_text("llm: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_investigation(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_investigation(tmp_path / "missing.yml")
    typo = tmp_path / "typo.yml"
    typo.write_text("promethues_url: http://127.0.0.1:1\n")
    with pytest.raises(ConfigError, match="promethues_url"):
        load_investigation(typo)
