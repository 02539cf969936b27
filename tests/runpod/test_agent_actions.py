"""The agent's scale actions end to end: Alertmanager-shaped POSTs to the real agent, the real
`runpod` SDK against the fake RunPod API, ansible/scale-pods.yml through ansible-runner, and a
private real slurmctld whose nodes stand in for the worker pods.

The playbook is scale-pods.yml (the RunPod half of scale.yml): scale.yml's tail configures the
new pods over SSH, which cannot run here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import runpod

from agent_webhook.config import AgentConfig, build_config
from tests.agent.conftest import (
    TOKEN,
    FakeHTTP,
    ScriptedInvestigator,
    ServiceThread,
    get_json,
    make_payload,
    post_alerts,
)
from tests.fakes.runpod_api import DEFAULT_API_KEY, FakeRunPod
from tests.harness.processes import wait_until
from tests.harness.promstack import AlertmanagerServer
from tests.harness.slurm import SlurmCluster, wait_for_job_state
from tests.runpod.conftest import ANSIBLE_DIR, drained_at

pytestmark = pytest.mark.slow

T0 = "2026-11-23T10:00:00Z"
PLAYBOOK_WAIT = 300.0  # seconds for a finding whose decision runs a playbook, on a loaded 2-core machine


def backlog(fingerprint: str, starts_at: str = T0, partition: str = "gpu") -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "SlurmGPUQueueBacklog", "partition": partition, "severity": "warning"},
        "annotations": {"summary": f"GPU jobs pending in partition {partition}"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
        "fingerprint": fingerprint,
    }


def idle(fingerprint: str, pod: dict[str, Any], starts_at: str = T0) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "RunPodPodIdle", "pod_id": pod["id"], "name": pod["name"], "severity": "warning"},
        "annotations": {"summary": f"{pod['name']} idle"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
        "fingerprint": fingerprint,
    }


class Agents:
    """Starts the real agent (in-process, over real HTTP) with an `actions` section."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServiceThread] = []
        self.token_file = tmp_path / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        self.inventory = tmp_path / "inventory"
        # This machine plays the Slurm head the drain commands run on.
        self.inventory.write_text(
            f"[slurm_head]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        )

    def config(
        self,
        db: str = "agent.db",
        extra_vars: dict[str, Any] | None = None,
        sinks: list[dict[str, Any]] | None = None,
        **actions: Any,
    ) -> AgentConfig:
        section: dict[str, Any] = {
            "enabled": True,
            "dry_run": False,
            "name_prefix": "t",
            "min_workers": 0,
            "max_workers": 4,
            "cooldown_seconds": 0,
            "spend_cap_dollars_per_hour": 20,
            "ansible_dir": str(ANSIBLE_DIR),
            "playbook": "scale-pods.yml",
            "inventory": str(self.inventory),
            "drain_timeout_seconds": 3,
            "playbook_timeout_seconds": 240,
            "extra_vars": {
                "runpod_poll_interval": 0.1,
                "runpod_wait_timeout": 60,
                "scale_drain_poll": 1,
                **(extra_vars or {}),
            },
            **actions,
        }
        raw = {
            "db": str(self.tmp_path / db),
            "token_file": str(self.token_file),
            "workers": 2,
            "actions": section,
            "sinks": sinks or [],
        }
        return build_config(raw, self.tmp_path)

    def start(self, config: AgentConfig) -> ServiceThread:
        svc = ServiceThread(config, ScriptedInvestigator()).start()
        self.started.append(svc)
        return svc

    def stop_all(self) -> None:
        for svc in reversed(self.started):
            svc.stop()
        self.started.clear()


@pytest.fixture
def agents(tmp_path: Path, sdk: FakeRunPod, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agents]:
    """The agent's SDK and playbooks reach the fake API through the environment, as in production."""
    monkeypatch.setenv("RUNPOD_API_KEY", DEFAULT_API_KEY)
    sdk.control({"start_delay": 0})
    made = Agents(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def create_pods(*names: str) -> dict[str, dict[str, str]]:
    """{name: {"id", "name"}}; NVIDIA L4 pods cost $0.28/h each (the SDK asks for any cloud: the community price)."""
    return {
        name: {"id": runpod.create_pod(name, "img", "NVIDIA L4", ports="22/tcp")["id"], "name": name} for name in names
    }


def decision(svc: ServiceThread, fingerprint: str, count: int = 1) -> list[dict[str, Any]]:
    """The decisions of this alert's findings, oldest first."""
    found = [f for f in svc.findings() if f["fingerprints"] == [fingerprint]]
    assert len(found) == count, found
    return [f["action"] for f in reversed(found)]


def metric(svc: ServiceThread, line_start: str) -> float:
    text = get_json(f"{svc.url}/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


def test_backlog_scales_up_once_although_alertmanager_repeats(agents: Agents, sdk: FakeRunPod) -> None:
    create_pods("t-head", "t-worker-1")
    deploys = sdk.creations()  # the test's own
    svc = agents.start(agents.config(max_workers=3, cooldown_seconds=3600))
    # A group re-send, an HA peer's copy and a repeat_interval resend: the same fingerprint + startsAt.
    for _ in range(3):
        assert post_alerts(svc.url, make_payload([backlog("bk")])).status == 202
    svc.wait_idle(PLAYBOOK_WAIT)
    assert post_alerts(svc.url, make_payload([backlog("bk")])).json()["duplicates"] == 1
    svc.wait_idle(PLAYBOOK_WAIT)

    (action,) = decision(svc, "bk")
    assert action["outcome"] == "taken", action
    assert (action["workers_before"], action["workers_after"], action["add"]) == (1, 2, ["t-worker-2"])
    assert action["playbook"]["rc"] == 0 and action["playbook"]["name"] == "scale-pods.yml"
    assert action["spend_dollars_per_hour"] == pytest.approx(0.56) and action["spend_cap_dollars_per_hour"] == 20
    assert sdk.creations() == deploys + 1
    assert sorted(p["name"] for p in sdk.pods()) == ["t-head", "t-worker-1", "t-worker-2"]

    # The backlog resolves and fires again (a new startsAt): the cooldown holds it back.
    post_alerts(svc.url, make_payload([backlog("bk", starts_at="2026-11-23T10:05:00Z")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    first, second = decision(svc, "bk", count=2)
    assert first["outcome"] == "taken"
    assert second["outcome"] == "refused" and second["reason"] == "cooldown", second
    assert metric(svc, 'agent_webhook_actions_total{action="scale_up",outcome="taken"}') == 1
    assert metric(svc, 'agent_webhook_actions_not_taken_total{action="scale_up",reason="cooldown"}') == 1
    assert metric(svc, 'agent_webhook_last_action_timestamp_seconds{action="scale_up"}') > 0

    # A restart does not reset the cooldown: it lives in the agent's SQLite store.
    agents.stop_all()
    svc = agents.start(agents.config(max_workers=3, cooldown_seconds=3600))
    post_alerts(svc.url, make_payload([backlog("bk2", starts_at="2026-11-23T10:10:00Z")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (after_restart,) = decision(svc, "bk2")
    assert after_restart["reason"] == "cooldown", after_restart
    assert sdk.creations() == deploys + 1


def test_backlog_scales_up_from_zero_workers_on_the_runpod_price(agents: Agents, sdk: FakeRunPod) -> None:
    """No worker runs, so no costPerHr to measure: the new worker is priced from RunPod's
    gpuTypes for what scale-pods.yml asks for (vars/runpod.yml: 1 x RTX 4090, SECURE: $0.69/h)."""
    create_pods("t-head")  # $0.28/h
    deploys = sdk.creations()

    # Over the cap with that price: refused, the price and where it came from in the reason.
    svc = agents.start(agents.config(db="cap.db", spend_cap_dollars_per_hour=0.9))
    post_alerts(svc.url, make_payload([backlog("bk-cap")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (capped,) = decision(svc, "bk-cap")
    assert capped["outcome"] == "refused" and capped["reason"] == "spend_cap", capped
    assert (
        "$0.28/h + $0.69/h for one more worker (RunPod SECURE price of 1 x NVIDIA GeForce RTX 4090)"
        in (capped["detail"])
    )
    agents.stop_all()

    # No price at all (a GPU type RunPod does not list) and no worker: refused, saying why.
    svc = agents.start(agents.config(db="unknown.db", extra_vars={"runpod_worker_gpu_type": "NVIDIA B999"}))
    post_alerts(svc.url, make_payload([backlog("bk-unknown")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (unknown,) = decision(svc, "bk-unknown")
    assert unknown["outcome"] == "refused" and unknown["reason"] == "spend_cap", unknown
    assert "cannot estimate a new worker's cost" in unknown["detail"] and "No GPU found" in unknown["detail"]
    assert sdk.creations() == deploys
    agents.stop_all()

    # Within the cap: one worker pod, priced as RunPod then bills it.
    svc = agents.start(agents.config(db="zero.db", spend_cap_dollars_per_hour=1.0))
    post_alerts(svc.url, make_payload([backlog("bk-zero")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (taken,) = decision(svc, "bk-zero")
    assert taken["outcome"] == "taken", taken
    assert (taken["workers_before"], taken["workers_after"], taken["add"]) == (0, 1, ["t-worker-1"])
    assert taken["spend_dollars_per_hour"] == pytest.approx(0.28)
    assert taken["added_dollars_per_hour"] == pytest.approx(0.69)
    assert taken["worker_cost_basis"] == "RunPod SECURE price of 1 x NVIDIA GeForce RTX 4090", taken
    assert taken["playbook"]["rc"] == 0
    assert sdk.creations() == deploys + 1
    (worker,) = [p for p in sdk.pods() if p["name"] == "t-worker-1"]
    assert worker["_fake"]["gpuTypeId"] == "NVIDIA GeForce RTX 4090" and worker["_fake"]["cloudType"] == "SECURE"
    assert worker["costPerHr"] == pytest.approx(0.69)
    assert sum(p["costPerHr"] for p in sdk.pods()) <= 1.0


def test_real_alertmanager_pair_renotifying_gives_one_scale_up(
    agents: Agents, sdk: FakeRunPod, alertmanager_factory: Callable[..., AlertmanagerServer]
) -> None:
    """No cooldown at all: only the one-decision-per-alert rule stands between resends and pods."""
    create_pods("t-head", "t-worker-1")
    deploys = sdk.creations()
    svc = agents.start(agents.config(max_workers=4, scale_up_step=1, cooldown_seconds=0))
    receiver = {
        "url": f"{svc.url}/alerts",
        "send_resolved": True,
        "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(agents.token_file)}},
    }
    route = {"receiver": "agent", "group_by": ["alertname"], "group_wait": "0s", "group_interval": "1s"}
    config = {
        "route": route | {"repeat_interval": "1s"},
        "receivers": [{"name": "agent", "webhook_configs": [receiver]}],
    }
    # Two Alertmanagers that cannot gossip (an HA pair in a partition), each re-notifying every second.
    am, peer = alertmanager_factory(config), alertmanager_factory(config)
    started = datetime.now(UTC) - timedelta(seconds=5)
    alert = {
        "labels": {"alertname": "SlurmGPUQueueBacklog", "partition": "gpu", "severity": "warning"},
        "annotations": {"summary": "GPU jobs pending in partition gpu"},
        "startsAt": started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }

    def notified() -> bool:
        am.post_alerts([alert])
        peer.post_alerts([alert])
        return metric(svc, 'agent_webhook_notifications_total{code="202"}') >= 6

    wait_until(notified, 60, interval=0.5, what="six notifications from the Alertmanager pair")
    svc.wait_idle(PLAYBOOK_WAIT)
    (finding,) = svc.findings()
    assert finding["action"]["outcome"] == "taken" and finding["action"]["add"] == ["t-worker-2"], finding["action"]
    assert sdk.creations() == deploys + 1
    assert metric(svc, 'agent_webhook_actions_total{action="scale_up",outcome="taken"}') == 1


def test_bounds_and_spend_cap_refuse_without_touching_pods(agents: Agents, sdk: FakeRunPod) -> None:
    pods = create_pods("t-head", "t-worker-1", "t-worker-2")
    # Burn $0.84/h; one more worker would make $1.12/h, over the $1.00/h cap.
    svc = agents.start(agents.config(min_workers=2, max_workers=3, spend_cap_dollars_per_hour=1.0))
    post_alerts(svc.url, make_payload([backlog("bk"), idle("idle-2", pods["t-worker-2"])]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (up,) = decision(svc, "bk")
    assert up["outcome"] == "refused" and up["reason"] == "spend_cap", up
    assert up["spend_dollars_per_hour"] == pytest.approx(0.84)
    (down,) = decision(svc, "idle-2")
    assert down["outcome"] == "refused" and down["reason"] == "bounds" and "min_workers is 2" in down["detail"]
    agents.stop_all()

    create_pods("t-worker-3")
    svc = agents.start(agents.config(db="b.db", max_workers=3))
    post_alerts(svc.url, make_payload([backlog("bk-max")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (at_max,) = decision(svc, "bk-max")
    assert at_max["reason"] == "bounds" and "max_workers is 3" in at_max["detail"], at_max
    ops = sdk.operations()
    assert "podTerminate" not in ops and sdk.creations() == 4  # only the test's own
    assert len(sdk.pods()) == 4


def test_backlog_in_another_partition_never_reaches_runpod(agents: Agents, sdk: FakeRunPod) -> None:
    """actions.partitions: an on-prem partition's backlog buys no pods, and is not even priced."""
    create_pods("t-head", "t-worker-1")
    svc = agents.start(agents.config(dry_run=True, partitions=["gpu"]))
    before = len(sdk.operations())
    post_alerts(svc.url, make_payload([backlog("bk-onprem", partition="onprem")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (other,) = decision(svc, "bk-onprem")
    assert other["outcome"] == "refused" and other["reason"] == "other_partition", other
    assert "'onprem'" in other["detail"] and "actions.partitions: gpu" in other["detail"]
    assert len(sdk.operations()) == before  # refused before the RunPod API
    assert metric(svc, 'agent_webhook_actions_not_taken_total{action="scale_up",reason="other_partition"}') == 1

    post_alerts(svc.url, make_payload([backlog("bk-gpu", starts_at="2026-11-23T10:05:00Z")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (listed,) = decision(svc, "bk-gpu")
    assert listed["outcome"] == "dry_run" and listed["add"] == ["t-worker-2"], listed
    assert not {"podFindAndDeployOnDemand", "restCreatePod"} & set(sdk.operations()[before:])


def test_idle_pod_is_drained_then_terminated_busy_never_and_dry_run_changes_nothing(
    agents: Agents, sdk: FakeRunPod, cluster: SlurmCluster
) -> None:
    pods = create_pods("t-head", "t-worker-1", "t-worker-2", "t-worker-3")
    real_node, idle_node = cluster.hostname, cluster.fake_nodes[0]
    job = cluster.sbatch("-w", real_node, wrap="sleep 600")
    wait_for_job_state(cluster, job, "RUNNING")
    extra = {
        "scale_slurm_node_names": {"t-worker-2": idle_node, "t-worker-3": real_node},
        "scale_slurm_environment": {"SLURM_CONF": str(cluster.conf)},
    }

    # Dry-run: the decision says what would happen; no drain, no terminate.
    setup_ops = len(sdk.operations())
    svc = agents.start(agents.config(db="dry.db", extra_vars=extra, min_workers=1, dry_run=True))
    post_alerts(svc.url, make_payload([idle("dry-2", pods["t-worker-2"]), backlog("dry-bk")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (would_remove,) = decision(svc, "dry-2")
    assert would_remove["outcome"] == "dry_run" and would_remove["dry_run"] is True, would_remove
    assert would_remove["remove"] == ["t-worker-2"] and would_remove["playbook"] is None
    assert "dry run: would scale down 3 -> 2" in would_remove["detail"]
    (would_add,) = decision(svc, "dry-bk")
    assert would_add["outcome"] == "dry_run" and would_add["add"] == ["t-worker-4"], would_add
    # The agent only read: the pod list, and the worker GPU type's price for the scale-up.
    assert set(sdk.operations()[setup_ops:]) == {"myself", "gpuTypes"}
    # (A fake node has no slurmd: its state is "unknown", never "drain" unless someone drains it.)
    assert "drain" not in cluster.node_state(idle_node), cluster.node_state(idle_node)
    assert "scale-down" not in cluster.scontrol("show", "node", idle_node)
    agents.stop_all()

    svc = agents.start(agents.config(extra_vars=extra, min_workers=1))
    # The busy node: drained, its job keeps running, its pod is not terminated.
    post_alerts(svc.url, make_payload([idle("idle-3", pods["t-worker-3"])]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (busy,) = decision(svc, "idle-3")
    assert busy["outcome"] == "refused" and busy["reason"] == "busy_node", busy
    assert "still runs jobs" in busy["detail"]
    assert "podTerminate" not in sdk.operations()
    assert cluster.run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() == "RUNNING"

    # The idle node: that very pod (not the highest-numbered worker) is drained, then terminated.
    post_alerts(svc.url, make_payload([idle("idle-2", pods["t-worker-2"])]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (taken,) = decision(svc, "idle-2")
    assert taken["outcome"] == "taken", taken
    assert (taken["workers_before"], taken["workers_after"], taken["remove"]) == (3, 2, ["t-worker-2"])
    (gone,) = sdk.state()["terminated"]
    assert gone["name"] == "t-worker-2"
    assert cluster.node_state(idle_node).startswith("drain"), cluster.node_state(idle_node)
    assert drained_at(cluster, idle_node) <= gone["t"]
    assert sorted(p["name"] for p in sdk.pods()) == ["t-head", "t-worker-1", "t-worker-3"]
    assert metric(svc, 'agent_webhook_actions_total{action="scale_down",outcome="taken"}') == 1
    assert metric(svc, 'agent_webhook_actions_not_taken_total{action="scale_down",reason="busy_node"}') == 1


def test_a_scale_down_deferred_by_the_cooldown_is_taken_when_it_ends_unless_resolved(
    agents: Agents, sdk: FakeRunPod, cluster: SlurmCluster
) -> None:
    """Three pods go idle at once: one is terminated, the cooldown defers the other two (a
    cooldown refusal did nothing, so it is not the alert's final decision). One of those stops
    firing; when the cooldown ends the other is terminated and that is posted to the finding's
    thread; the resolved one is left alone."""
    hook = FakeHTTP().start()
    try:
        deferred_scale_down(agents, sdk, cluster, hook)
    finally:
        hook.stop()


def deferred_scale_down(agents: Agents, sdk: FakeRunPod, cluster: SlurmCluster, hook: FakeHTTP) -> None:
    pods = create_pods("t-head", "t-worker-1", "t-worker-2", "t-worker-3")
    idle_node = cluster.fake_nodes[0]
    extra = {
        "scale_slurm_node_names": {f"t-worker-{i}": idle_node for i in (1, 2, 3)},
        "scale_slurm_environment": {"SLURM_CONF": str(cluster.conf)},
    }
    cooldown = 60
    svc = agents.start(
        agents.config(
            extra_vars=extra, cooldown_seconds=cooldown, sinks=[{"type": "webhook", "url": f"{hook.url}/hook"}]
        )
    )
    alerts = {f"def-{i}": idle(f"def-{i}", pods[f"t-worker-{i}"]) for i in (1, 2, 3)}
    post_alerts(svc.url, make_payload(list(alerts.values())))
    svc.wait_idle(PLAYBOOK_WAIT)
    first = {fp: decision(svc, fp)[0] for fp in alerts}
    taken = [fp for fp, d in first.items() if d["outcome"] == "taken"]
    deferred = sorted(fp for fp, d in first.items() if (d["outcome"], d["reason"]) == ("refused", "cooldown"))
    assert len(taken) == 1 and len(deferred) == 2, first
    assert "deferred, decided again when it ends" in first[deferred[0]]["detail"]
    assert len(sdk.state()["terminated"]) == 1

    # One deferred alert resolves before the cooldown ends: it must not be acted on later.
    stays, resolves = deferred
    gone = {**alerts[resolves], "status": "resolved", "endsAt": "2026-11-23T10:01:00Z"}
    post_alerts(svc.url, make_payload([gone]))

    def decided_again() -> bool:
        return decision(svc, stays)[0]["outcome"] != "refused"

    wait_until(decided_again, timeout=cooldown + PLAYBOOK_WAIT, interval=1.0, what="the deferred decision")
    (later,) = decision(svc, stays)
    assert later["outcome"] == "taken" and later["remove"] == [alerts[stays]["labels"]["name"]], later
    terminated = sorted(p["name"] for p in sdk.state()["terminated"])
    assert terminated == sorted([alerts[taken[0]]["labels"]["name"], alerts[stays]["labels"]["name"]])
    # The cooldown held: the second termination came a full cooldown after the first decision.
    first_at = datetime.fromisoformat(first[taken[0]]["decided_at"])
    assert datetime.fromisoformat(later["decided_at"]) - first_at >= timedelta(seconds=cooldown)
    # Posted to the thread, with the decision.
    wait_until(lambda: any(r.json().get("event") == "acted" for r in hook.requests), timeout=30, what="acted")
    acted = [r.json() for r in hook.requests if r.json().get("event") == "acted"]
    assert len(acted) == 1 and acted[0]["detail"]["action"]["outcome"] == "taken", acted
    # The resolved one: still the cooldown refusal, its pod still there, and no further decision.
    time.sleep(svc.service.actions.retry_interval_seconds * 2)
    assert decision(svc, resolves)[0]["reason"] == "cooldown"
    assert alerts[resolves]["labels"]["name"] in {p["name"] for p in sdk.pods()}
    assert metric(svc, 'agent_webhook_actions_total{action="scale_down",outcome="taken"}') == 2


def test_runpod_api_down_and_a_failing_playbook_degrade(agents: Agents, sdk: FakeRunPod) -> None:
    create_pods("t-head", "t-worker-1")
    svc = agents.start(agents.config())
    sdk.control({"inject": {"op": "myself", "status": 503, "message": "upstream unavailable", "count": 1}})
    post_alerts(svc.url, make_payload([backlog("api-down")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (down,) = decision(svc, "api-down")
    assert down["outcome"] == "refused" and down["reason"] == "runpod_api", down
    assert DEFAULT_API_KEY not in str(down)

    # No capacity for the workers' GPU type: the playbook fails, the decision says so.
    sdk.set_capacity("NVIDIA GeForce RTX 4090", False)
    post_alerts(svc.url, make_payload([backlog("no-capacity")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    (failed,) = decision(svc, "no-capacity")
    assert failed["outcome"] == "failed" and failed["reason"] == "playbook_failed", failed
    assert failed["playbook"]["rc"] != 0 and "no longer any instances" in (failed["playbook"]["error"] or "")

    # The worker pool is still there for the next alert.
    post_alerts(svc.url, make_payload([backlog("after", starts_at="2026-11-23T11:00:00Z")]))
    svc.wait_idle(PLAYBOOK_WAIT)
    assert len(svc.findings()) == 3
    assert get_json(f"{svc.url}/healthz").status == 200


def test_scale_pods_remove_refuses_anything_but_a_worker(sdk: FakeRunPod, run_playbook: Any) -> None:
    sdk.control({"start_delay": 0})
    create_pods("t-head", "t-worker-1")
    inventory = f"[slurm_head]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    run = run_playbook(
        "scale-pods.yml", extravars={"runpod_name_prefix": "t", "remove": ["t-head"]}, inventory=inventory
    )
    assert run.status == "failed"
    assert "only worker pods named t-worker-<n> can be removed, not t-head" in run.stdout
    assert "podTerminate" not in sdk.operations()
    # Removing a worker that is already gone is a no-op (as the agent may race a teardown).
    run = run_playbook(
        "scale-pods.yml", extravars={"runpod_name_prefix": "t", "remove": "t-worker-7"}, inventory=inventory
    )
    assert run.status == "successful", run.stdout[-3000:]
    assert len(sdk.pods()) == 2
