"""The committed dashboards are exactly what the generator produces, load back into the SDK's
schema models without loss, and follow the suite's rules (descriptions, units, datasource)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from grafana import generate
from grafana.common import DATASOURCE_UID, FINDINGS_TAG
from tests.grafana.dashboard_queries import DASHBOARD_DIR, all_panels, dashboards

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "grafana" / "provisioning"
# Panels that must say what their numbers are in.
UNIT_PANELS = {"timeseries", "stat", "bargauge", "table", "heatmap", "state-timeline"}
# Panels that read Grafana's own annotation store, not Prometheus.
NON_PROMETHEUS_PANELS = {"row", "annolist"}
EXPECTED = {"gpu-fleet.json", "gpu-node.json", "slurm-cluster.json", "jobs-efficiency.json", "findings.json"}


@pytest.fixture(scope="module", autouse=True)
def _sdk_plugins() -> None:
    # Without the panel and query plugins registered, from_json keeps targets as untyped bags.
    register_default_plugins()


def test_committed_json_is_generator_output(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0
    generated = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_bytes() for p in DASHBOARD_DIR.glob("*.json")}
    assert set(generated) == EXPECTED
    assert set(committed) == set(generated), "stale or missing files in grafana/dashboards/"
    drifted = [name for name in generated if generated[name] != committed[name]]
    assert not drifted, f"{drifted} differ from the generator output: run `make dashboards` and commit"


def test_generator_is_deterministic() -> None:
    assert generate.rendered() == generate.rendered()


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    out = tmp_path / "dashboards"
    subprocess.run([sys.executable, "-m", "grafana.generate", "--out", str(out)], cwd=REPO, check=True)
    (out / "gpu-fleet.json").write_text("{}\n")
    result = subprocess.run(
        [sys.executable, "-m", "grafana.generate", "--out", str(out), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "gpu-fleet.json" in result.stderr
    assert (out / "gpu-fleet.json").read_text() == "{}\n"  # --check writes nothing


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_into_sdk_models_without_loss(name: str) -> None:
    raw = json.loads((DASHBOARD_DIR / name).read_text())
    model = dashboard_models.Dashboard.from_json(raw)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == raw, "the SDK's schema drops or changes fields"
    panels = [p for p in model.panels or [] if isinstance(p, dashboard_models.Panel)]
    assert len(panels) == sum(1 for p in raw["panels"] if p["type"] != "row")
    for panel in panels:
        for target in panel.targets or []:
            assert isinstance(target, prometheus_models.Dataquery), f"{panel.title}: untyped target {target!r}"
            assert target.expr


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panel_rules(name: str) -> None:
    dashboard = dashboards()[name]
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = [p["title"] for p in all_panels(dashboard) if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        where = f"{name}: {panel['title']}"
        assert len(panel.get("description", "")) > 20, f"{where}: no description"
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, f"{where}: off the grid"
        if panel["type"] in UNIT_PANELS:
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        if panel["type"] in NON_PROMETHEUS_PANELS:
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where}: no queries"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", where
            assert target["expr"].strip(), where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{where}: duplicate refIds"


def _units(dashboard: dict[str, Any]) -> dict[str, str]:
    return {
        p["title"]: p["fieldConfig"]["defaults"].get("unit", "") for p in all_panels(dashboard) if "fieldConfig" in p
    }


def test_units_follow_the_metric() -> None:
    """A panel showing a `_ratio`, `_bytes`, `_celsius`, `_watts`, `_hertz` or `_seconds` series
    directly uses the matching Grafana unit."""
    suffix_units = {
        "_ratio": "percentunit",
        "_bytes": "bytes",
        "_celsius": "celsius",
        "_watts": "watt",
        "_hertz": "hertz",
        "_seconds": "s",
    }
    checked = 0
    for name, dashboard in dashboards().items():
        for panel in all_panels(dashboard):
            targets = panel.get("targets", [])
            if len(targets) != 1 or "fieldConfig" not in panel:
                continue
            expr = targets[0]["expr"]
            # Only plain series (optionally aggregated), not arithmetic on them.
            metric = expr.split("{")[0].split("(")[-1]
            if any(op in expr for op in (" / ", "count", "rate(", "increase(", "histogram_quantile", " < ")):
                continue
            for suffix, unit in suffix_units.items():
                if metric.endswith(suffix):
                    assert panel["fieldConfig"]["defaults"]["unit"] == unit, f"{name}: {panel['title']} ({metric})"
                    checked += 1
    assert checked >= 10


def test_variables() -> None:
    for name, dashboard in dashboards().items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
        assert "cluster" in variables, name
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"]["uid"] == "${datasource}", f"{name}: ${var['name']}"
                assert var["query"].startswith("label_values("), f"{name}: ${var['name']}"
                if var["includeAll"]:
                    # `=~".*"` also matches series without the label (e.g. no `cluster` label at all).
                    assert var["allValue"] == ".*", f"{name}: ${var['name']}"
    assert {"node", "gpu"} <= {v["name"] for v in dashboards()["gpu-node.json"]["templating"]["list"]}
    assert "model" in {v["name"] for v in dashboards()["gpu-fleet.json"]["templating"]["list"]}


def test_findings_annotations_on_gpu_and_slurm_dashboards() -> None:
    for name in ("gpu-fleet.json", "gpu-node.json", "slurm-cluster.json", "jobs-efficiency.json", "findings.json"):
        annotations = dashboards()[name]["annotations"]["list"]
        findings = [a for a in annotations if a["name"] == "gpu-watchdog findings"]
        assert len(findings) == 1, name
        assert findings[0]["datasource"] == {"type": "grafana", "uid": "-- Grafana --"}
        assert findings[0]["target"]["type"] == "tags"
        assert FINDINGS_TAG in findings[0]["target"]["tags"]
    node = next(a for a in dashboards()["gpu-node.json"]["annotations"]["list"] if a["name"] == "gpu-watchdog findings")
    assert node["target"]["tags"] == [FINDINGS_TAG, "$node"]
    panel_types = {p["type"] for p in all_panels(dashboards()["findings.json"])}
    assert "annolist" in panel_types


def test_provisioning_is_usable_by_stock_grafana() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "gpu-watchdog.yml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["url"] == "http://127.0.0.1:9090"

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "gpu-watchdog.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).is_absolute()
    assert provider["folder"]
    for dashboard in dashboards().values():
        assert dashboard["uid"].startswith("gpu-watchdog-") and len(dashboard["uid"]) <= 40
        assert "id" not in dashboard  # provisioning assigns ids; a fixed one would clash


def test_recorded_series_exist_in_the_rules() -> None:
    """Every `level:metric:operation` series a panel reads is recorded by alert_rules/."""
    if not (REPO / "alert_rules" / "recording.rules.yml").exists():
        pytest.skip("alert_rules/recording.rules.yml (issue #5) is not in the tree yet")
    recorded = set()
    for path in (REPO / "alert_rules").glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            recorded |= {rule["record"] for rule in group["rules"] if "record" in rule}
    used = {
        name
        for dashboard in dashboards().values()
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        for name in re.findall(r"\b[a-z_]+:[a-z0-9_:]*[a-z0-9_]\b", target["expr"])
    }
    assert used, "no panel uses a recording rule"
    assert used <= recorded, f"not recorded by alert_rules/*.rules.yml: {sorted(used - recorded)}"
