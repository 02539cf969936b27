"""One emulated RunPod cluster for the module: a head pod and two GPU worker pods, as containers
of the pod image, provisioned by provision.yml and configured by site.yml over SSH
(scripts/cluster.py, with time-compressed rules: factor 12, a minute becomes 5 s)."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scripts.cluster import Cluster

TIME_FACTOR = 12


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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    for tool in ("podman", "mmdebstrap", "ssh"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `make system-deps` installs it (APT_PACKAGES in the Makefile)")
    state = tmp_path_factory.mktemp("cluster")
    made = Cluster(state_dir=state, prefix=f"gwt{secrets.token_hex(2)}", time_factor=TIME_FACTOR)
    try:
        endpoints = made.up(workers=2, gpus=4)
        yield RunningCluster(made, endpoints)
    finally:
        made.down()
