"""Configuration: precedence (flags > env > file > defaults), validation with clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent_webhook.config import ConfigError, build_config, investigation_mapping, load_config
from agent_webhook.investigation import Investigation
from agent_webhook.wiring import make_investigator

AGENT = str(Path(sys.executable).parent / "agent-webhook")


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(None)
    assert cfg.listen == "0.0.0.0:9095"
    assert cfg.workers == 4 and cfg.db_synchronous == "full"
    assert cfg.token is None and cfg.sinks == []
    assert (cfg.reconcile_interval_seconds, cfg.reconcile_stale_after_seconds) == (60, 600)


def test_reconcile_keys(tmp_path: Path) -> None:
    cfg = build_config({"reconcile_interval_seconds": 0, "reconcile_stale_after_seconds": 900}, tmp_path)
    assert (cfg.reconcile_interval_seconds, cfg.reconcile_stale_after_seconds) == (0, 900)
    assert cfg.alertmanager_url is None
    cfg = build_config({"alertmanager_url": "http://127.0.0.1:9093/"}, tmp_path)
    assert cfg.alertmanager_url == "http://127.0.0.1:9093"


def test_file_paths_resolve_against_the_file_and_flags_override(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("abc\n")
    config = _write(
        tmp_path / "agent.yml",
        {
            "listen": "127.0.0.1:1234",
            "db": "state/agent.db",
            "token_file": "tok",
            "prometheus_url": "http://127.0.0.1:9090/",
            "llm": {"base_url": "http://127.0.0.1:8000/v1", "model": "file-model", "max_steps": 6},
            "slurm": {"mode": "exporter"},
            "sinks": [{"type": "stdout"}, {"type": "webhook", "name": "ops", "url": "http://127.0.0.1:1/hook"}],
        },
    )
    cfg = load_config(config, {"listen": "127.0.0.1:4321", "llm_model": "flag-model", "db": None})
    assert cfg.listen == "127.0.0.1:4321"
    assert cfg.db == tmp_path / "state" / "agent.db"
    assert cfg.token == "abc"
    assert [s.name for s in cfg.sinks] == ["stdout", "ops"]
    inv = investigation_mapping(cfg)
    assert inv["prometheus_url"] == "http://127.0.0.1:9090"
    assert inv["llm"] == {"base_url": "http://127.0.0.1:8000/v1", "model": "flag-model", "max_steps": 6}
    assert inv["slurm"] == {"mode": "exporter"}
    assert "listen" not in inv


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"tokn_file": "x"}, "unknown key"),
        ({"listen": "nowhere"}, "listen address"),
        ({"workers": 0}, "workers: must be at least 1"),
        ({"workers": "many"}, "workers: expected an integer"),
        ({"max_body_bytes": 10}, "max_body_bytes"),
        ({"token_file": "/nonexistent/token"}, "token_file: cannot read"),
        ({"sinks": {"type": "slack"}}, "sinks: expected a list"),
        ({"sinks": [{"type": "teams"}]}, r"sinks\[0\].type"),
        ({"sinks": [{"type": "slack"}]}, r"sinks\[0\].url: required"),
        ({"sinks": [{"type": "slack", "url": "ftp://x"}]}, r"sinks\[0\].url"),
        ({"sinks": [{"type": "stdout"}, {"type": "stdout"}]}, "used twice"),
        ({"sinks": [{"type": "stdout", "colour": "red"}]}, "unknown key"),
        ({"prometheus_url": "localhost:9090"}, "prometheus_url"),
        ({"db_synchronous": "off"}, "db_synchronous"),
        ({"sink_retry": {"initial_seconds": 0}}, "sink_retry.initial_seconds"),
        ({"reconcile_interval_seconds": -1}, "reconcile_interval_seconds: must be at least 0"),
        ({"reconcile_interval_seconds": "1m"}, "reconcile_interval_seconds: expected a number"),
        ({"reconcile_stale_after_seconds": 0}, "reconcile_stale_after_seconds: must be at least 1"),
        ({"reconcile_stale_after_seconds": True}, "reconcile_stale_after_seconds: expected a number"),
        ({"reconcile_interval": 60}, "unknown key"),
    ],
)
def test_invalid_config_is_a_clear_error(tmp_path: Path, raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(raw, tmp_path)


def test_empty_token_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        build_config({"token_file": "tok"}, tmp_path)


def test_make_investigator_builds_the_investigation() -> None:
    assert isinstance(make_investigator(load_config(None)), Investigation)


def test_env_overrides_file_and_flag_overrides_env(tmp_path: Path) -> None:
    config = _write(tmp_path / "agent.yml", {"listen": "127.0.0.1:1"})
    env = {"GPU_WATCHDOG_LISTEN": "bogus-from-env", "PATH": "/usr/bin:/bin"}
    # The env value wins over the file (and is invalid, so the error names it) ...
    result = subprocess.run(
        [AGENT, "--config", str(config), "--db", str(tmp_path / "a.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "bogus-from-env" in result.stderr
    # ... and a flag wins over the env (this one is invalid too, and named).
    result = subprocess.run(
        [AGENT, "--config", str(config), "--db", str(tmp_path / "a.db"), "--listen", "flag:99999"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "flag:99999" in result.stderr and "Traceback" not in result.stderr


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.yml"
    config.write_text("listen: [unclosed\n")
    result = subprocess.run([AGENT, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: config")
    assert "Traceback" not in result.stderr


def test_sink_with_credentials_in_url_and_token_file_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "sink.token").write_text("tok-0123456789")
    config = tmp_path / "agent.yml"
    sink = {"type": "webhook", "url": "https://bot:hunter2@hooks.example/x", "token_file": "sink.token"}
    config.write_text(json.dumps({"db": "a.db", "listen": "127.0.0.1:0", "sinks": [sink]}))
    result = subprocess.run([AGENT, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "sinks[0]" in result.stderr and "token_file" in result.stderr and "https://hooks.example/x" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_second_instance_on_the_same_database_exits_2(tmp_path: Path) -> None:
    from agent_webhook.store import Store

    held = Store(tmp_path / "a.db")
    held.open()
    try:
        result = subprocess.run(
            [AGENT, "--db", str(tmp_path / "a.db"), "--listen", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        held.close()
    assert result.returncode == 2
    assert "in use by another agent-webhook" in result.stderr


def test_llm_budget_longer_than_the_investigation_timeout_exits_2(tmp_path: Path) -> None:
    """A budget the worker's timeout would cut short would throw the triage away: refused at start."""
    llm = {"base_url": "http://127.0.0.1:1/v1", "model": "m", "budget_seconds": 280}
    config = _write(tmp_path / "agent.yml", {"db": "a.db", "listen": "127.0.0.1:0", "llm": llm})
    result = subprocess.run([AGENT, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "investigation_timeout_seconds (300)" in last and "332s" in last and "llm.budget_seconds 280" in last
    assert "Traceback" not in result.stderr
    # Raising the timeout (or lowering the budget) is accepted.
    ok = build_config({"investigation_timeout_seconds": 332, "llm": llm}, tmp_path)
    assert isinstance(make_investigator(ok), Investigation)
