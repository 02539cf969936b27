"""Fixtures for the RunPod tests: the fake API (in-process) and playbook runs through ansible-runner."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

from tests.fakes.runpod_api import DEFAULT_API_KEY, FakeRunPod
from tests.harness.processes import ProcessManager
from tests.harness.slurm import SlurmCluster, SlurmUnavailable, start_cluster

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture
def fake_runpod() -> Iterator[FakeRunPod]:
    """A fresh fake RunPod API on a free loopback port; pods come up 0.3 s after creation."""
    server = FakeRunPod(start_delay=0.3).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sdk(fake_runpod: FakeRunPod, monkeypatch: pytest.MonkeyPatch) -> FakeRunPod:
    """The real SDK in this process pointed at the fake (to prepare or inspect state)."""
    import runpod

    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake_runpod.url)
    monkeypatch.setenv("RUNPOD_REST_API_URL", f"{fake_runpod.url}/v1")
    monkeypatch.setattr(runpod, "api_key", DEFAULT_API_KEY)
    return fake_runpod


@dataclass
class PlaybookRun:
    status: str
    rc: int
    stdout: str
    events: list[dict[str, Any]]
    artifacts: Path
    # task name -> list of results (one per host/loop item, in order)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def result(self, task: str, index: int = 0) -> dict[str, Any]:
        found = self.results.get(task) or self.failed.get(task)
        assert found, f"no result for task {task!r}; tasks with results: {sorted(self.results)}\n{self.stdout[-3000:]}"
        return found[index]

    def all_text(self) -> str:
        """Everything the run wrote: stdout and every event, for leak checks."""
        return self.stdout + json.dumps(self.events)


def _collect(runner: Any, artifacts: Path) -> PlaybookRun:
    stdout = runner.stdout.read() if runner.stdout else ""
    events = list(runner.events)
    run = PlaybookRun(status=runner.status, rc=runner.rc, stdout=stdout, events=events, artifacts=artifacts)
    for event in events:
        data = event.get("event_data", {})
        task = data.get("task")
        res = data.get("res")
        if res is None or task is None:
            continue
        if event["event"] in ("runner_on_ok", "runner_item_on_ok", "runner_on_skipped"):
            if event["event"] == "runner_on_ok" and "results" in res:
                continue  # the loop summary: items are reported one by one
            run.results.setdefault(task, []).append(res)
        elif event["event"] in ("runner_on_failed", "runner_item_on_failed"):
            if event["event"] == "runner_on_failed" and "results" in res:
                continue
            run.failed.setdefault(task, []).append(res)
    return run


@pytest.fixture
def run_playbook(tmp_path: Path, fake_runpod: FakeRunPod) -> Any:
    """run_playbook(playbook, extravars=..., envvars=..., inventory=..., check=False) -> PlaybookRun.

    `playbook` is a path (relative to ansible/) or YAML text. The RunPod key and URL of the fake
    are in the environment unless `envvars` overrides them; modules run on this venv's Python.
    """
    counter = iter(range(1000))

    def run(
        playbook: str,
        *,
        extravars: Mapping[str, Any] | None = None,
        envvars: Mapping[str, str] | None = None,
        inventory: str | None = None,
        check: bool = False,
    ) -> PlaybookRun:
        private = tmp_path / f"runner-{next(counter)}"
        private.mkdir()
        if "\n" in playbook:
            path = private / "playbook.yml"
            path.write_text(playbook)
        else:
            path = ANSIBLE_DIR / playbook
        env = {
            "RUNPOD_API_BASE_URL": fake_runpod.url,
            "RUNPOD_REST_API_URL": f"{fake_runpod.url}/v1",
            "RUNPOD_API_KEY": DEFAULT_API_KEY,
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "PATH": os.pathsep.join([VENV_BIN, os.environ.get("PATH", ""), "/usr/sbin"]),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            **(envvars or {}),
        }
        # Keep the key out of the runner's env/envvars file when a test wants it absent.
        env = {k: v for k, v in env.items() if v is not None}
        inv = inventory or f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        (private / "inventory").mkdir()
        (private / "inventory" / "hosts").write_text(inv)
        runner = ansible_runner.run(
            private_data_dir=str(private),
            playbook=str(path),
            inventory=str(private / "inventory" / "hosts"),
            extravars=dict(extravars or {}),
            envvars=env,
            cmdline="--check" if check else None,
            quiet=True,
            timeout=240,
        )
        return _collect(runner, private / "artifacts")

    return run


@pytest.fixture
def cluster(procs: ProcessManager) -> Iterator[SlurmCluster]:
    """A private real Slurm cluster: this host's real node plus one fake node."""
    try:
        slurm = start_cluster(procs, fake_nodes=1)
    except SlurmUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)  # make test installs Slurm: never skip silently
    try:
        yield slurm
    finally:
        slurm.cancel_all()
        slurm.stop()


def drained_at(cluster: SlurmCluster, node: str) -> float:
    """When Slurm recorded the drain: `Reason=scale-down [root@2026-11-23T10:01:02]`."""
    out = cluster.scontrol("show", "node", node)
    match = re.search(r"Reason=scale-down \[\S+@(\S+)\]", out)
    assert match, out
    return datetime.fromisoformat(match.group(1)).timestamp()
