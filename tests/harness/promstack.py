"""Real Prometheus and Alertmanager (Debian's packages) on loopback ports, for tests.

prom = start_prometheus(procs, tmp_path, scrape_targets={"gpu": ["127.0.0.1:9400"]},
                        rule_files=[Path("alert_rules/gpu.rules.yml")])
prom.wait_for("up == 1")
am = start_alertmanager(procs, tmp_path, config={...})

Either can sit behind an exporter-toolkit web config (`--web.config.file`) with basic auth:
`basic_auth_users={"admin": "plaintext"}` (hashed here); the returned server's helpers then
send those credentials (`server.headers`), and a plain `http_get(server.url)` gets 401.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from tests.harness.processes import LOOPBACK, ManagedProcess, ProcessManager, free_port, http_get, wait_until

PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


class MissingBinary(RuntimeError):
    pass


def find_binary(candidates: Sequence[str], package: str) -> str:
    for name in candidates:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    raise MissingBinary(f"none of {', '.join(candidates)} found; install Debian's {package} (make test does)")


def basic_auth_header(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def _web_config(root: Path, users: Mapping[str, str] | None) -> tuple[list[str], dict[str, str]]:
    """The --web.config.file argument for `users` (bcrypt cost 4: fast, still real bcrypt) and the
    headers of the first user; nothing without users."""
    if not users:
        return [], {}
    hashed = {
        user: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode() for user, password in users.items()
    }
    path = root / "web-config.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": hashed}))
    user, password = next(iter(users.items()))
    return [f"--web.config.file={path}"], basic_auth_header(user, password)


def _api_get(
    base: str,
    path: str,
    params: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> Any:
    url = f"{base}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    status, body = http_get(url, timeout=timeout, headers=headers)
    if status != 200:
        raise RuntimeError(f"GET {url} -> {status}: {body[:300]!r}")
    return json.loads(body)


@dataclass
class PrometheusServer:
    url: str
    port: int
    process: ManagedProcess
    config_path: Path
    data_dir: Path
    # Basic-auth header when started behind a web config.
    headers: dict[str, str] = field(default_factory=dict)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = str(at)
        data = _api_get(self.url, "/api/v1/query", params, headers=self.headers)
        return list(data["data"]["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = _api_get(
            self.url,
            "/api/v1/query_range",
            {"query": expr, "start": str(start), "end": str(end), "step": str(step)},
            headers=self.headers,
        )
        return list(data["data"]["result"])

    def wait_for(
        self, expr: str, timeout: float = 30.0, predicate: Callable[[list[dict[str, Any]]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """Wait until `expr` returns a non-empty result (or one that satisfies predicate)."""
        check = predicate or bool
        result: list[dict[str, Any]] = []

        def probe() -> bool:
            nonlocal result
            result = self.query(expr)
            return check(result)

        wait_until(probe, timeout, interval=0.25, what=f"Prometheus query {expr!r}")
        return result

    def series(self, selector: str, start: float) -> list[dict[str, str]]:
        """/api/v1/series: the label sets matching `selector` since `start` (Grafana's variable lookups)."""
        data = _api_get(self.url, "/api/v1/series", {"match[]": selector, "start": str(start)}, headers=self.headers)
        return list(data["data"])

    def targets(self) -> list[dict[str, Any]]:
        return list(_api_get(self.url, "/api/v1/targets", headers=self.headers)["data"]["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        return list(_api_get(self.url, "/api/v1/rules", headers=self.headers)["data"]["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(_api_get(self.url, "/api/v1/alerts", headers=self.headers)["data"]["alerts"])

    def reload(self) -> None:
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST", headers=self.headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


@dataclass
class AlertmanagerServer:
    url: str
    port: int
    process: ManagedProcess
    config_path: Path
    headers: dict[str, str] = field(default_factory=dict)

    def alerts(self, active_only: bool = True) -> list[dict[str, Any]]:
        params = {"active": "true"} if active_only else None
        return list(_api_get(self.url, "/api/v2/alerts", params, headers=self.headers))

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        req = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **self.headers},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


def prometheus_config(
    scrape_targets: Mapping[str, Sequence[str]] | None = None,
    rule_files: Sequence[Path] = (),
    alertmanager_urls: Sequence[str] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
    alertmanager_basic_auth: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`alertmanager_basic_auth`: {username, password_file} for an Alertmanager behind a web config."""
    scrape_configs: list[dict[str, Any]] = [
        {"job_name": job, "static_configs": [{"targets": list(targets)}]}
        for job, targets in (scrape_targets or {}).items()
    ]
    scrape_configs.extend(dict(c) for c in extra_scrape_configs)
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
            "scrape_timeout": scrape_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": scrape_configs,
    }
    if alertmanager_urls:
        alertmanager: dict[str, Any] = {
            "static_configs": [{"targets": [urllib.parse.urlparse(u).netloc for u in alertmanager_urls]}]
        }
        if alertmanager_basic_auth:
            alertmanager["basic_auth"] = dict(alertmanager_basic_auth)
        config["alerting"] = {"alertmanagers": [alertmanager]}
    return config


def start_prometheus(
    procs: ProcessManager,
    workdir: Path,
    *,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
    resend_delay: str = "1s",
    basic_auth_users: Mapping[str, str] | None = None,
    **config_kwargs: Any,
) -> PrometheusServer:
    """Start Prometheus with `config` (or one built by :func:`prometheus_config` from kwargs),
    behind a web config with `basic_auth_users` (username -> plaintext password) when given."""
    binary = find_binary(PROMETHEUS_BINARIES, "prometheus")
    port = free_port()
    root = workdir / f"prometheus-{port}"
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    config_path = root / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(dict(config) if config is not None else prometheus_config(**config_kwargs)))
    web_args, headers = _web_config(root, basic_auth_users)
    proc = procs.start(
        "prometheus",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1h",
            # Alerts evaluated before the Alertmanager is discovered are dropped and only re-sent
            # after the resend delay (1m by default): keep tests fast.
            # (Prometheus sets an alert's endsAt 4 resend delays ahead: a longer one lets a
            # stalled Prometheus on a loaded machine keep its alerts alive in Alertmanager.)
            f"--rules.alert.resend-delay={resend_delay}",
            "--log.level=info",
            *web_args,
            *extra_args,
        ],
    )
    url = f"http://{LOOPBACK}:{port}"
    _wait_ready(proc, url, headers, timeout)
    return PrometheusServer(
        url=url, port=port, process=proc, config_path=config_path, data_dir=data_dir, headers=headers
    )


def _wait_ready(proc: ManagedProcess, url: str, headers: dict[str, str], timeout: float) -> None:
    proc.wait_ready(
        lambda: http_get(f"{url}/-/ready", timeout=2, headers=headers)[0] == 200, timeout, what=f"{proc.name} at {url}"
    )


def start_alertmanager(
    procs: ProcessManager,
    workdir: Path,
    config: Mapping[str, Any] | str,
    timeout: float = 30.0,
    port: int | None = None,
    basic_auth_users: Mapping[str, str] | None = None,
    cluster_port: int | None = None,
    peers: Sequence[int] = (),
) -> AlertmanagerServer:
    """Start a single, non-clustered Alertmanager with `config` (a dict or YAML text).

    With the `port` (and `workdir`) of a stopped one, this is that Alertmanager restarted: same
    address and data directory (silences, notification log), and, as in production, no alerts.
    With `cluster_port`, a member of an HA cluster instead: it gossips on that loopback port with
    the members listening on `peers` (their cluster ports).
    """
    binary = find_binary(ALERTMANAGER_BINARIES, "prometheus-alertmanager")
    port = port or free_port()
    root = workdir / f"alertmanager-{port}"
    (root / "data").mkdir(parents=True, exist_ok=True)
    config_path = root / "alertmanager.yml"
    config_path.write_text(config if isinstance(config, str) else yaml.safe_dump(dict(config)))
    web_args, headers = _web_config(root, basic_auth_users)
    proc = procs.start(
        "alertmanager",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.path={root / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            *_cluster_args(cluster_port, peers),
            "--log.level=info",
            *web_args,
        ],
    )
    url = f"http://{LOOPBACK}:{port}"
    _wait_ready(proc, url, headers, timeout)
    return AlertmanagerServer(url=url, port=port, process=proc, config_path=config_path, headers=headers)


def _cluster_args(cluster_port: int | None, peers: Sequence[int]) -> list[str]:
    if cluster_port is None:
        return ["--cluster.listen-address="]  # no gossip: a private, single instance
    return [
        f"--cluster.listen-address={LOOPBACK}:{cluster_port}",
        f"--cluster.advertise-address={LOOPBACK}:{cluster_port}",
        "--cluster.peer-timeout=2s",
        "--cluster.gossip-interval=100ms",
        "--cluster.pushpull-interval=2s",
        *(f"--cluster.peer={LOOPBACK}:{p}" for p in peers),
    ]


def wait_seconds(seconds: float) -> None:
    """Named sleep for tests that must let a `for:` duration or a scrape interval pass."""
    time.sleep(seconds)
