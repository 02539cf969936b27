"""promtool, amtool and coverage checks for alert_rules/ and docs/runbooks/.

Every alert must have a runbook, required labels and annotations, and promtool test cases
where it fires and where it stays silent; every runbook must have its alert.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.alert_rules.ruleset import (
    ALERTMANAGER_CONFIG,
    COMPONENTS,
    ISSUE_ALERTS,
    OVERVIEW_DOC,
    REPO_ROOT,
    REQUIRED_ANNOTATIONS,
    RUNBOOK_BASE,
    RUNBOOK_SECTIONS,
    RUNBOOKS_DIR,
    SEVERITIES,
    alert_names,
    load_coverage,
    load_rules,
    rule_files,
    rule_test_files,
    runbook_names,
)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def test_rule_files_exist() -> None:
    names = {p.name for p in rule_files()}
    assert {"gpu.rules.yml", "slurm.rules.yml", "recording.rules.yml"} <= names


def test_promtool_check_rules_is_clean_with_fatal_lint(promtool: str) -> None:
    # --lint=all: "duplicate-rules" is the only lint promtool 2.42 has; --lint-fatal exits 3 on it.
    proc = run([promtool, "check", "rules", "--lint=all", "--lint-fatal", *map(str, rule_files())])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize("test_file", rule_test_files(), ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool: str, test_file: Path) -> None:
    proc = run([promtool, "test", "rules", str(test_file)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_catch_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    """The harness itself: a test file expecting the wrong labels must fail."""
    source = next(p for p in rule_test_files() if "severity: critical" in p.read_text())
    broken = tmp_path / source.name
    text = source.read_text().replace("severity: critical", "severity: info", 1)
    assert text != source.read_text()
    # rule_files are relative to the test file: point them back at the real ones.
    doc = yaml.safe_load(text)
    doc["rule_files"] = [str((source.parent / f).resolve()) for f in doc["rule_files"]]
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = run([promtool, "test", "rules", str(broken)])
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def test_amtool_check_config_passes(amtool: str) -> None:
    proc = run([amtool, "check-config", str(ALERTMANAGER_CONFIG)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "GPUFellOffBus", "severity": "critical", "node": "gpu-a1"}, "gpu-watchdog-agent"),
        ({"alertname": "SlurmNodeDrained", "severity": "warning", "node": "gpu-a1"}, "gpu-watchdog-agent"),
        ({"alertname": "SlurmNodeMaintenance", "severity": "info", "node": "gpu-a1"}, "gpu-watchdog-agent"),
    ],
)
def test_every_alert_routes_to_the_agent(amtool: str, labels: dict[str, str], receiver: str) -> None:
    argv = [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}"]
    proc = run(argv + [f"{k}={v}" for k, v in labels.items()])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receiver


def test_alertmanager_webhook_settings() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert config["route"]["group_by"] == ["alertname", "node"]
    [receiver] = config["receivers"]
    [webhook] = receiver["webhook_configs"]
    assert webhook["url"] == "http://127.0.0.1:9095/alerts"
    assert webhook["send_resolved"] is True
    assert 0 < webhook["max_alerts"] <= 200
    auth = webhook["http_config"]["authorization"]
    assert auth["credentials_file"].startswith("/")
    assert "credentials" not in auth, "the token belongs in a file, not in the config"


# --- coverage -------------------------------------------------------------------------------


def alerts_by_name() -> dict[str, list[dict[str, object]]]:
    by_name: dict[str, list[dict[str, object]]] = {}
    for rule in load_rules():
        if rule.alert:
            by_name.setdefault(rule.alert, []).append(rule.body)
    return by_name


def test_the_issue_alerts_are_all_defined() -> None:
    assert ISSUE_ALERTS <= alert_names()


@pytest.mark.parametrize("rule", [r for r in load_rules() if r.alert], ids=lambda r: f"{r.alert}-{r.labels}")
def test_alert_has_required_labels_and_annotations(rule: object) -> None:
    from tests.alert_rules.ruleset import Rule

    assert isinstance(rule, Rule)
    assert rule.labels.get("severity") in SEVERITIES
    assert rule.labels.get("component") in COMPONENTS
    for name in REQUIRED_ANNOTATIONS:
        assert rule.annotations.get(name, "").strip(), f"{rule.alert}: annotation {name} missing"
    assert rule.annotations["runbook_url"] == f"{RUNBOOK_BASE}{rule.alert}.md"
    # The values that matter: GPU alerts name node and GPU, node alerts the node.
    description = rule.annotations["description"]
    cluster_wide = {
        "SlurmControllerDown",
        "SlurmExporterDown",
        "SlurmGPUQueueBacklog",
        "SlurmSchedulerSlow",
        "RunPodSpendHigh",
    }
    if rule.alert not in cluster_wide:
        assert "$labels.node" in description, rule.alert
    if rule.alert in {"GPUXidError"}:
        assert "$labels.xid" in description
    if rule.alert in {"SlurmNodeDrained", "SlurmNodeDown"}:
        assert "slurm_node_reason_info" in description, "the drain/down reason belongs in the description"


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    alerts = alert_names()
    runbooks = runbook_names()
    assert sorted(alerts - runbooks) == [], "alerts without docs/runbooks/<AlertName>.md"
    assert sorted(runbooks - alerts) == [], "runbooks without an alert"


@pytest.mark.parametrize("name", sorted(runbook_names()))
def test_runbook_says_what_how_to_confirm_and_what_to_do(name: str) -> None:
    text = (RUNBOOKS_DIR / f"{name}.md").read_text()
    assert text.startswith(f"# {name}\n")
    for section in RUNBOOK_SECTIONS:
        assert re.search(rf"^{re.escape(section)}\b", text, re.M), f"{name}.md lacks {section}"
    assert "```" in text, f"{name}.md: confirm with concrete PromQL or commands"


def test_every_alert_fires_in_a_test_and_stays_silent_in_another() -> None:
    cov = load_coverage()
    for name in sorted(alert_names()):
        assert cov.fires.get(name), f"{name}: no promtool test case where it fires"
        assert cov.silent.get(name), f"{name}: no promtool near-miss case where it stays silent"


def test_every_rule_file_is_loaded_by_a_test_file() -> None:
    cov = load_coverage()
    assert {p.resolve() for p in rule_files()} <= cov.rule_files


def test_every_recording_rule_is_tested() -> None:
    """Each recorded series is queried by a promql_expr_test or feeds an alert that is tested."""
    cov = load_coverage()
    alert_exprs = " ".join(str(r.body["expr"]) for r in load_rules() if r.alert)
    for rule in load_rules():
        if rule.record:
            used = any(rule.record in expr for expr in cov.expr_tests) or rule.record in alert_exprs
            assert used, f"recording rule {rule.record} is not covered by any test"


def test_every_severity_split_is_consistent() -> None:
    """Rules sharing an alert name differ in severity or expression, never in component."""
    for name, bodies in alerts_by_name().items():
        components = {b["labels"]["component"] for b in bodies}  # type: ignore[index]
        assert len(components) == 1, f"{name}: one component per alert name"


def test_rules_join_on_node_never_on_instance() -> None:
    for rule in load_rules():
        expr = re.sub(r"\s+", " ", str(rule.body["expr"]))
        assert not re.search(r"\b(on|ignoring|by)\s*\([^)]*\binstance\b", expr), (
            f"{rule.alert or rule.record}: joins or groups on instance; use node/gpu (docs/architecture.md)"
        )


def test_overview_doc_lists_every_alert_and_recording_rule() -> None:
    text = OVERVIEW_DOC.read_text()
    for rule in load_rules():
        name = rule.alert or rule.record
        assert f"`{name}`" in text or f"[{name}]" in text, f"docs/alert-rules.md does not mention {name}"


# The XID catalog's "severity in practice" (/docs/alert-rules.md has the full table).
CATALOG_CRITICAL = {48, 62, 64, 74, 79, 95, 119, 120, 140}
CATALOG_WARNING = {63, 92, 94}


def xid_selectors() -> dict[str, tuple[str, str]]:
    """severity -> (operator, regex) of each GPUXidError rule's xid matcher."""
    out: dict[str, tuple[str, str]] = {}
    for body in alerts_by_name()["GPUXidError"]:
        match = re.search(r'xid(=~|!~)"([^"]+)"', str(body["expr"]))
        assert match, body["expr"]
        out[body["labels"]["severity"]] = (match.group(1), match.group(2))  # type: ignore[index]
    return out


def test_xid_severity_follows_the_catalog_and_every_code_has_exactly_one() -> None:
    selectors = xid_selectors()
    assert set(selectors) == SEVERITIES

    def severities_of(code: int) -> list[str]:
        hits = []
        for severity, (op, regex) in selectors.items():
            matched = re.fullmatch(regex, str(code)) is not None  # Prometheus anchors regexes
            if matched == (op == "=~"):
                hits.append(severity)
        return hits

    for code in range(1, 1000):
        assert len(severities_of(code)) == 1, f"XID {code}: {severities_of(code)}"
    assert all(severities_of(c) == ["critical"] for c in CATALOG_CRITICAL)
    assert all(severities_of(c) == ["warning"] for c in CATALOG_WARNING)
    assert severities_of(45) == ["info"], "XID 45 follows another XID"
    assert severities_of(13) == ["warning"], "the issue asks application XIDs (13, 31, 43) at warning"
