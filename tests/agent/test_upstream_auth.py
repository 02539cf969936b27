"""The agent against a real Prometheus and a real Alertmanager behind web-config basic auth.

On RunPod both sit behind a public HTTP proxy when their ports are published, so the roles put
them behind `--web.config.file` (issue 15, point 8). Everything the agent reads from them must
keep working with `prometheus_basic_auth` / `alertmanager_basic_auth` in agent.yml: the evidence
queries, the active-alerts tool, reconciliation and `gpu-watchdog ask`; without them each gets
a 401 and says so. Prometheus itself delivers its alerts to the authenticated Alertmanager with
a `basic_auth.password_file`, as the prometheus role configures it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent_webhook.config import AgentConfig, ConfigError, build_config
from agent_webhook.investigation import Investigation, InvestigationConfig
from agent_webhook.investigation.cli_ask import ask
from agent_webhook.investigation.config import basic_auth
from agent_webhook.investigation.prometheus import PrometheusAPI
from agent_webhook.investigation.safety import URLAllowlist
from agent_webhook.investigation.tools import ToolBox
from tests.agent.conftest import ServiceThread, make_alert, make_payload, post_alerts
from tests.harness.processes import ProcessManager, http_get, wait_until
from tests.harness.promstack import (
    AlertmanagerServer,
    MissingBinary,
    PrometheusServer,
    basic_auth_header,
    start_alertmanager,
    start_prometheus,
)

pytestmark = pytest.mark.slow

PROM_PASSWORD = "prom-pässword-1"  # not ASCII: sent as UTF-8, as Go clients do
AM_PASSWORD = "am-password-2"
RULES = """
groups:
  - name: auth
    rules:
      - alert: AuthProbe
        expr: vector(1)
        labels: {severity: warning, node: gpu-a1, gpu: "3"}
        annotations: {summary: delivered through basic auth}
"""


def _secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@dataclass
class Secured:
    prometheus: PrometheusServer
    alertmanager: AlertmanagerServer
    prom_password_file: Path
    am_password_file: Path

    def mapping(self, *, auth: bool = True) -> dict[str, Any]:
        raw: dict[str, Any] = {"prometheus_url": self.prometheus.url, "alertmanager_url": self.alertmanager.url}
        if auth:
            raw["prometheus_basic_auth"] = {"username": "agent", "password_file": str(self.prom_password_file)}
            raw["alertmanager_basic_auth"] = {"username": "agent", "password_file": str(self.am_password_file)}
        return raw


@pytest.fixture(scope="module")
def secured(session_procs: ProcessManager, tmp_path_factory: pytest.TempPathFactory) -> Secured:
    """One Prometheus and one Alertmanager behind basic auth for the module (starting them is
    most of its time); the tests only read from them."""
    workdir = tmp_path_factory.mktemp("upstream-auth")
    try:
        am = start_alertmanager(
            session_procs,
            workdir,
            {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]},
            basic_auth_users={"agent": AM_PASSWORD, "prometheus": "prom-to-am"},
        )
        rules = workdir / "auth.rules.yml"
        rules.write_text(RULES)
        prom = start_prometheus(
            session_procs,
            workdir,
            basic_auth_users={"agent": PROM_PASSWORD},
            rule_files=[rules],
            alertmanager_urls=[am.url],
            alertmanager_basic_auth={
                "username": "prometheus",
                "password_file": str(_secret(workdir / "prom-to-am", "prom-to-am\n")),
            },
        )
    except MissingBinary as exc:
        pytest.fail(str(exc), pytrace=False)
    # Prometheus delivered its alert through Alertmanager's basic auth.
    wait_until(lambda: [a["labels"]["alertname"] for a in am.alerts()] == ["AuthProbe"], 30, what="AuthProbe in AM")
    return Secured(
        prom, am, _secret(workdir / "prom-password", PROM_PASSWORD + "\n"), _secret(workdir / "am-pw", AM_PASSWORD)
    )


def test_without_credentials_both_answer_401(secured: Secured) -> None:
    for server, user, password in (
        (secured.prometheus, "agent", PROM_PASSWORD),
        (secured.alertmanager, "agent", AM_PASSWORD),
    ):
        url = f"{server.url}/-/ready"
        assert http_get(url)[0] == 401
        assert http_get(url, headers=basic_auth_header(user, "wrong"))[0] == 401
        assert http_get(url, headers=basic_auth_header(user, password))[0] == 200


async def test_evidence_and_alerts_tools_with_and_without_credentials(secured: Secured) -> None:
    for auth in (True, False):
        cfg = InvestigationConfig.from_mapping(secured.mapping(auth=auth))
        assert cfg.prometheus_url
        source = PrometheusAPI(cfg.prometheus_url, URLAllowlist([cfg.prometheus_url]), auth=cfg.prometheus_auth)
        box = ToolBox(cfg, source)
        try:
            query = await box.call("prometheus_query", {"query": "vector(42)"})
            alerts = await box.call("active_alerts", {"node": "gpu-a1"})
        finally:
            await box.close()
            await source.close()
        if auth:
            assert query.ok and "42" in query.text, query.text
            assert alerts.ok and "AuthProbe node=gpu-a1 gpu=3" in alerts.text, alerts.text
            assert box.unavailable == {}
        else:
            assert not query.ok and "HTTP 401 (set prometheus_basic_auth in agent.yml)" in query.text
            assert not alerts.ok and "HTTP 401 (set alertmanager_basic_auth in agent.yml)" in alerts.text
            assert set(box.unavailable) == {"prometheus", "alertmanager"}


async def test_an_investigation_is_not_degraded_with_credentials(secured: Secured) -> None:
    question = "what is wrong with gpu 3 on node gpu-a1?"
    dx = await Investigation(InvestigationConfig.from_mapping(secured.mapping())).ask(question)
    assert dx.degraded == [], dx.degraded
    assert "AuthProbe" in dx.diagnosis_markdown
    bare = await Investigation(InvestigationConfig.from_mapping(secured.mapping(auth=False))).ask(question)
    assert any("401" in d for d in bare.degraded), bare.degraded


def test_ask_reads_the_credentials_from_agent_yml(secured: Secured, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    _secret(conf / "prometheus-password", PROM_PASSWORD)
    _secret(conf / "alertmanager-password", AM_PASSWORD)
    # Relative password files resolve against agent.yml's directory, not the working directory.
    agent_yml = conf / "agent.yml"
    agent_yml.write_text(
        json.dumps(
            {
                "prometheus_url": secured.prometheus.url,
                "alertmanager_url": secured.alertmanager.url,
                "prometheus_basic_auth": {"username": "agent", "password_file": "prometheus-password"},
                "alertmanager_basic_auth": {"username": "agent", "password_file": "alertmanager-password"},
            }
        )
    )
    result = CliRunner().invoke(ask, ["--json", "--config", str(agent_yml), "what is wrong with gpu 3 on gpu-a1?"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["degraded"] == [], answer["degraded"]
    assert PROM_PASSWORD not in result.output and AM_PASSWORD not in result.output


def test_reconciliation_reads_alertmanager_with_credentials(
    secured: Secured,
    agent_config: Callable[..., AgentConfig],
    start_service: Callable[..., ServiceThread],
    tmp_path: Path,
) -> None:
    (am_alert,) = secured.alertmanager.alerts()
    started = datetime.now(UTC) - timedelta(seconds=5)

    def forward(svc: ServiceThread) -> None:
        kept = make_alert(am_alert["fingerprint"], starts_at=am_alert["startsAt"])
        kept["labels"] = am_alert["labels"]
        # Alertmanager never had this one: reconciliation resolves it once it has read the list.
        gone = make_alert("0123456789abcdef", node="gpu-a7", starts_at=started.isoformat())
        assert post_alerts(svc.url, make_payload([kept, gone])).status == 202
        svc.wait_idle()

    def statuses(svc: ServiceThread) -> dict[str, str]:
        return {f["node"]: f["status"] for f in svc.findings()}

    keys = {"alertmanager_url": secured.alertmanager.url, "reconcile_interval_seconds": 1}
    bare = start_service(agent_config(**keys, db=str(tmp_path / "bare.db"), reconcile_stale_after_seconds=1))
    forward(bare)
    wait_until(lambda: _runs(bare, "invalid") >= 3, 30, what="unauthenticated reconcile runs")
    assert _runs(bare, "ok") == 0
    assert statuses(bare) == {"gpu-a1": "firing", "gpu-a7": "firing"}  # nothing resolved blind
    bare.stop()

    svc = start_service(
        agent_config(
            **keys,
            alertmanager_basic_auth={"username": "agent", "password_file": str(secured.am_password_file)},
            reconcile_stale_after_seconds=2,
        )
    )
    forward(svc)
    wait_until(lambda: statuses(svc).get("gpu-a7") == "resolved", 30, what="the missing alert reconciled")
    assert statuses(svc)["gpu-a1"] == "firing" and _runs(svc, "invalid") == 0


def _runs(svc: ServiceThread, outcome: str) -> float:
    prefix = f'agent_webhook_reconcile_runs_total{{outcome="{outcome}"}} '
    for line in http_get(f"{svc.url}/metrics")[1].decode().splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


# -- configuration ---------------------------------------------------------------------------


def test_basic_auth_settings_are_validated(tmp_path: Path, agent_config: Callable[..., AgentConfig]) -> None:
    secret = _secret(tmp_path / "pw", "hunter2-pw\n")
    cfg = agent_config(prometheus_basic_auth={"username": "agent", "password_file": "pw"})
    assert cfg.prometheus_auth is not None and cfg.alertmanager_auth is None
    assert cfg.prometheus_auth.password == "hunter2-pw" and cfg.prometheus_auth.password_file == str(secret)
    assert "hunter2" not in repr(cfg) and "hunter2" not in repr(cfg.prometheus_auth)
    assert cfg.prometheus_auth.headers() == basic_auth_header("agent", "hunter2-pw")
    (tmp_path / "empty").write_text("\n")
    bad = [
        ({"username": "agent"}, "prometheus_basic_auth.password_file: expected a file path"),
        ({"username": "a:b", "password_file": "pw"}, "prometheus_basic_auth.username: expected a user name"),
        ({"username": "agent", "password_file": "pw", "password": "x"}, "unknown key(s) password"),
        ({"username": "agent", "password_file": "missing"}, "cannot read"),
        ({"username": "agent", "password_file": "empty"}, "is empty"),
        ("agent:pw", "must be a mapping"),
    ]
    for value, message in bad:
        with pytest.raises(ConfigError, match="prometheus_basic_auth") as err:
            agent_config(prometheus_basic_auth=value)
        assert message in str(err.value)
    with pytest.raises(ConfigError, match="must not carry credentials: set alertmanager_basic_auth"):
        build_config(
            {"alertmanager_url": "http://agent:hunter2@127.0.0.1:9093", "db": str(tmp_path / "x.db")}, tmp_path
        )
    # The investigation validates the same keys when given the mapping directly.
    with pytest.raises(ValueError, match=r"alertmanager_basic_auth\.username"):
        basic_auth(
            {"alertmanager_basic_auth": {"username": "", "password_file": str(secret)}}, "alertmanager_basic_auth"
        )
