"""A client for an emulated cluster that scripts/cluster.py brought up: its pods, Slurm, Prometheus, the agent.

Used by the cluster tests (tests/cluster/) and bench/cluster_figures.py, so the bench needs no
test code. `RunningCluster` reads the endpoints `Cluster.up()` / `Cluster.describe()` return
(web basic auth from the generated password file, the agent's bearer token).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.cluster import Cluster


@dataclass
class RunningCluster:
    cluster: Cluster
    endpoints: dict[str, Any]

    def reload(self) -> None:
        self.endpoints = self.cluster.describe() | {
            "agent_token_file": self.endpoints["agent_token_file"],
        }

    @property
    def head(self) -> str:
        return str(self.endpoints["head"]["container"])

    def worker(self, index: int) -> dict[str, Any]:
        return dict(self.endpoints["workers"][index - 1])

    def exec(self, container: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", "exec", container, *argv], capture_output=True, text=True, timeout=timeout)

    def sinfo(self) -> dict[str, tuple[str, str]]:
        """node -> (state, gres) as the head's sinfo prints them."""
        out = self.exec(self.head, "sinfo", "--Node", "--noheader", "--format", "%N|%t|%G").stdout
        rows = {}
        for line in out.splitlines():
            node, state, gres = line.strip().split("|")
            rows[node] = (state, gres)
        return rows

    def _web_auth(self) -> str:
        password = Path(self.endpoints["web_password_file"]).read_text().strip()
        raw = f"{self.endpoints['web_user']}:{password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def get_json(self, base: str, path: str, params: dict[str, str] | None = None, bearer: str | None = None) -> Any:
        url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        auth = f"Bearer {bearer}" if bearer else self._web_auth()
        request = urllib.request.Request(url, headers={"Authorization": auth})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get_json(self.endpoints["prometheus"], "/api/v1/query", {"query": expr})
        return list(data["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.get_json(self.endpoints["prometheus"], "/api/v1/targets")["data"]["activeTargets"])

    def findings(self) -> list[dict[str, Any]]:
        token = Path(self.endpoints["agent_token_file"]).read_text().strip()
        data = self.get_json(self.endpoints["agent"], "/findings", {"limit": "500"}, bearer=token)
        return list(data["findings"] if isinstance(data, dict) else data)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    """Poll until probe() returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}"[:3000])
