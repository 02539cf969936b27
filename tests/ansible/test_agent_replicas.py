"""The agent_webhook role deploying replicas on PostgreSQL, run for real on localhost.

Two runs of the role, two prefixes and ports (two replicas, as two hosts would be), one real
PostgreSQL (the tests' fixture, password auth). The role's package install is skipped the way
the pod image skips it (an `image:` stamp in a venv that links to this checkout's): the test is
about the store settings. Also: the alertmanager role's receiver lists every replica.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.agent.conftest import TOKEN, get_json, make_alert, make_payload, post_alerts
from tests.ansible.conftest import ANSIBLE_DIR, VENV_BIN
from tests.ansible.test_victoria_metrics import _play, _stop
from tests.harness.postgres import USER, PostgresServer
from tests.harness.processes import free_port, wait_until

pytestmark = pytest.mark.slow


def _linked_venv(root: Path) -> Path:
    """A venv the role takes as installed by an image: links to this checkout's programs."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "agent-webhook", "gpu-watchdog"):
        (venv / "bin" / name).symlink_to(VENV_BIN / name)
    (venv / ".gpu-watchdog-installed").write_text("image: linked to the checkout by the test")
    return venv


def _role_play(prefix: Path, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "hosts": "localhost",
        "gather_facts": True,
        "vars": {
            "gpu_watchdog_prefix": str(prefix),
            "gpu_watchdog_venv": str(_linked_venv(prefix)),
            "gpu_watchdog_install_system_packages": False,
            "gw_service_manager": "supervisor",
            # The checkout's venv may sit on an interpreter only root can reach (pyenv under
            # /root): the agent runs as root here, as its own user in a deployment.
            "agent_webhook_user": "root",
            "agent_webhook_group": "root",
            "agent_webhook_listen_host": "127.0.0.1",
            "agent_webhook_port": port,
            "agent_webhook_token": TOKEN,
            **extra,
        },
        "roles": ["agent_webhook"],
    }


def test_role_deploys_two_replicas_on_one_postgresql_with_the_password_only_in_the_0600_env(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the role creates directories owned by other users: run as root (CI does)")
    database = postgres_url.rsplit("/", 1)[1]
    store_url = f"postgresql://{USER}@127.0.0.1:{postgres_server.port}/{database}"
    prefixes: list[Path] = []
    urls: list[str] = []
    try:
        for i in range(2):
            prefix = Path(tempfile.mkdtemp(prefix=f"gw-agent-{i}-"))
            prefix.chmod(0o755)
            prefixes.append(prefix)
            port = free_port()
            play = _role_play(
                prefix,
                port,
                agent_webhook_store_url=store_url,
                agent_webhook_store_password=postgres_server.password,
            )
            result = _play(tmp_path, f"agent-{i}", play)
            assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
            assert postgres_server.password not in result.stdout + result.stderr
            urls.append(f"http://127.0.0.1:{port}")

            config = yaml.safe_load((prefix / "etc" / "agent.yml").read_text())
            assert config["db"] == store_url
            assert postgres_server.password not in (prefix / "etc" / "agent.yml").read_text()
            env_files = [p for p in prefix.rglob("*") if p.is_file() and "PGPASSWORD=" in p.read_text(errors="replace")]
            assert env_files, "no environment file with PGPASSWORD"
            for env_file in env_files:
                assert stat.S_IMODE(env_file.stat().st_mode) == 0o600, env_file

        # Both replicas serve from the one database: an alert sent to both (an HA pair's
        # fan-out) is one finding, visible from either.
        payload = make_payload([make_alert("ab12cd34ef56ab78")])
        assert [post_alerts(u, payload).json()["new"] for u in urls] in ([1, 0], [0, 1])

        def findings(url: str) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = get_json(f"{url}/findings").json()["findings"]
            return found

        wait_until(lambda: len(findings(urls[0])) == 1, 60, what="the finding")
        assert [f["id"] for f in findings(urls[1])] == [f["id"] for f in findings(urls[0])]
    finally:
        for prefix in prefixes:
            _stop(prefix)
            shutil.rmtree(prefix, ignore_errors=True)


def test_role_refuses_a_store_url_with_a_password(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the role creates directories owned by other users: run as root (CI does)")
    prefix = Path(tempfile.mkdtemp(prefix="gw-agent-bad-"))
    prefix.chmod(0o755)
    try:
        url = "postgresql://gw:hunter2@db.example/gw"
        result = _play(tmp_path, "bad-url", _role_play(prefix, free_port(), agent_webhook_store_url=url))
        assert result.returncode != 0
        assert "without a password" in result.stdout, result.stdout[-3000:]
        assert not (prefix / "etc" / "agent.yml").exists()
    finally:
        _stop(prefix)
        shutil.rmtree(prefix, ignore_errors=True)


def test_alertmanager_receiver_lists_every_replica(tmp_path: Path) -> None:
    path = ANSIBLE_DIR / "roles" / "alertmanager" / "filter_plugins" / "alertmanager_agent.py"
    spec = importlib.util.spec_from_file_location("alertmanager_agent", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = {
        "route": {"receiver": "gpu-watchdog-agent"},
        "receivers": [{"name": "gpu-watchdog-agent", "webhook_configs": [{"send_resolved": True, "max_alerts": 50}]}],
    }
    urls = [f"http://agent-{i}.example:9095/alerts" for i in range(3)]
    config = module.agent_receiver(base, "gpu-watchdog-agent", urls, "/etc/gw/agent-token")
    hooks = config["receivers"][0]["webhook_configs"]
    assert [h["url"] for h in hooks] == urls
    assert all(h["max_alerts"] == 50 and h["http_config"]["authorization"]["credentials_file"] for h in hooks)
    single = module.agent_receiver(base, "gpu-watchdog-agent", urls[0], "/etc/gw/agent-token")
    assert [h["url"] for h in single["receivers"][0]["webhook_configs"]] == urls[:1]
    (tmp_path / "agent-token").write_text("x")
    config["receivers"][0]["webhook_configs"] = [
        {**h, "http_config": {"authorization": {"credentials_file": str(tmp_path / "agent-token")}}} for h in hooks
    ]
    (tmp_path / "am.yml").write_text(json.dumps(config))
    check = subprocess.run(["amtool", "check-config", str(tmp_path / "am.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
