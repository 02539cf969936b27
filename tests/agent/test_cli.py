"""`gpu-watchdog findings` and `gpu-watchdog investigate`, as installed console scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent_webhook.config import PREFIX_ENV, AgentConfig
from tests.agent.conftest import SAMPLES, ServiceThread, make_alert, make_payload, post_alerts

WATCHDOG = str(Path(sys.executable).parent / "gpu-watchdog")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WATCHDOG, *args], capture_output=True, text=True, timeout=60, env=env)


def test_findings_lists_filters_and_json(
    agent_config: Callable[..., AgentConfig], start_service: Callable[..., ServiceThread], token_file: Path
) -> None:
    svc = start_service(agent_config())
    post_alerts(svc.url, make_payload([make_alert(f"fp{i}", node=f"gpu-worker-{i}") for i in range(5)]))
    svc.wait_idle()
    result = _run("findings", "--server", svc.url, "--token-file", str(token_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5 and all("GPUXidError" in line and "scripted diagnosis" in line for line in lines)
    env = dict(os.environ, GPU_WATCHDOG_SERVER=svc.url, GPU_WATCHDOG_TOKEN_FILE=str(token_file))
    result = _run("findings", "--json", "--node", "gpu-worker-1", "--limit", "1", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data) == 1 and data[0]["node"] == "gpu-worker-1"
    unauthorized = _run("findings", "--server", svc.url)
    assert unauthorized.returncode == 1 and "401" in unauthorized.stderr
    bad = _run("findings", "--server", svc.url, "--token-file", str(token_file), "--since", "whenever")
    assert bad.returncode == 1 and "since" in bad.stderr


def test_findings_follow_prints_new_findings(
    agent_config: Callable[..., AgentConfig], start_service: Callable[..., ServiceThread], token_file: Path
) -> None:
    svc = start_service(agent_config())
    proc = subprocess.Popen(
        [
            WATCHDOG,
            "findings",
            "--follow",
            "--json",
            "--interval",
            "0.2",
            "--server",
            svc.url,
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        time.sleep(1.0)
        post_alerts(svc.url, make_payload([make_alert("followed")]))
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line)["fingerprints"] == ["followed"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_findings_unreachable_server_is_one_clear_line() -> None:
    result = _run("findings", "--server", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr


def test_credentials_in_server_are_used_and_never_printed(
    tmp_path: Path, agent_config: Callable[..., AgentConfig], start_service: Callable[..., ServiceThread]
) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"hunter2-pass", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  ops: '{hashed}'\n")
    svc = start_service(agent_config(web_config="web.yml"))
    with_creds = svc.url.replace("http://", "http://ops:hunter2-pass@")
    ok = _run("findings", "--server", with_creds)
    assert ok.returncode == 0, ok.stderr  # the URL's user info became basic auth
    wrong = _run("findings", "--server", svc.url.replace("http://", "http://ops:hunter2-wrong@"))
    assert wrong.returncode == 1 and "401" in wrong.stderr and "hunter2" not in wrong.stderr
    assert f"{svc.url} answered 401" in wrong.stderr
    down = _run("findings", "--server", "http://ops:hunter2-pass@127.0.0.1:9")
    assert down.returncode == 1 and "hunter2" not in down.stderr
    assert "cannot reach http://127.0.0.1:9" in down.stderr
    token_only = _run("findings", "--server", "http://ghp_0123456789abcdefghijklmnop@127.0.0.1:9")
    assert "ghp_" not in token_only.stderr


def test_investigate_prints_markdown_and_json(tmp_path: Path) -> None:
    result = _run("investigate", str(SAMPLES / "firing.json"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# ")
    assert "GPUXidError" in result.stdout and "Recommended actions" in result.stdout
    result = _run("investigate", "--json", str(SAMPLES / "grouped.json"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data) == 4 and {"alert", "diagnosis"} <= set(data[0])
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"labels": {"alertname": "GPUThermal", "node": "n1"}}))
    result = _run("investigate", str(single))
    assert result.returncode == 0, result.stderr and "GPUThermal" in result.stdout


def test_investigate_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"alerts": [{"status": "firing", "labels": 3}]}')
    result = _run("investigate", str(bad))
    assert result.returncode == 1 and "labels" in result.stderr and "Traceback" not in result.stderr
    assert _run("investigate", str(tmp_path / "missing.json")).returncode == 1


def test_findings_without_flags_reads_the_deployed_agent_yml(
    agent_config: Callable[..., AgentConfig],
    start_service: Callable[..., ServiceThread],
    token_file: Path,
    tmp_path: Path,
) -> None:
    """After `make up` the plain `gpu-watchdog findings` works: --config defaults to
    $GPU_WATCHDOG_PREFIX/etc/agent.yml, whose listen and token_file lead to the agent."""
    svc = start_service(agent_config())
    post_alerts(svc.url, make_payload([make_alert("deployed", node="gpu-worker-0")]))
    svc.wait_idle()
    prefix = tmp_path / "prefix"
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc" / "agent.yml").write_text(f"listen: 0.0.0.0:{svc.port}\ntoken_file: {token_file}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_")}
    result = _run("findings", env={**env, PREFIX_ENV: str(prefix)})
    assert result.returncode == 0, result.stderr
    assert "GPUXidError" in result.stdout and "gpu-worker-0" in result.stdout
    # GPU_WATCHDOG_CONFIG (and --config) win over the deployed file; flags over the file's keys.
    other = tmp_path / "other.yml"
    other.write_text("listen: 127.0.0.1:9\n")
    result = _run("findings", env={**env, PREFIX_ENV: str(prefix), "GPU_WATCHDOG_CONFIG": str(other)})
    assert result.returncode == 1 and "cannot reach http://127.0.0.1:9" in result.stderr
    result = _run(
        "findings", "--server", svc.url, env={**env, PREFIX_ENV: str(prefix), "GPU_WATCHDOG_CONFIG": str(other)}
    )
    assert result.returncode == 1 and "401" in result.stderr  # the other file names no token
    result = _run(
        "findings", "--server", svc.url, "--token-file", str(token_file), env={**env, "GPU_WATCHDOG_CONFIG": str(other)}
    )
    assert result.returncode == 0 and "gpu-worker-0" in result.stdout
    # No deployment: the built-in defaults, as before.
    result = _run("findings", env={**env, PREFIX_ENV: str(tmp_path / "none")})
    assert result.returncode == 1 and "http://127.0.0.1:9095" in result.stderr  # unreachable, or 401 without a token
    (prefix / "etc" / "agent.yml").write_text(f"listen: 0.0.0.0:{svc.port}\ntoken_file: {tmp_path / 'missing'}\n")
    result = _run("findings", env={**env, PREFIX_ENV: str(prefix)})
    assert result.returncode == 1 and "token_file: cannot read" in result.stderr and "Traceback" not in result.stderr
