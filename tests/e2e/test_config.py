"""The e2e test config is the real config, time-compressed and nothing else."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scripts.time_compression import (
    RULES_DIR,
    compressed_alertmanager_config,
    compressed_rule_files,
    format_duration,
    parse_duration,
    scale_expr,
)

_ANY_DURATION = re.compile(r"\b(?:\d+(?:ms|[smhdwy]))+\b")


def _seconds_spelled(expr: str) -> str:
    """Every duration respelled in seconds, so '15m' and '900s' compare equal."""
    return _ANY_DURATION.sub(lambda m: f"{parse_duration(m.group(0)):g}s", expr)


def test_durations_round_trip() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    assert format_duration(15) == "15s" and format_duration(0.25) == "250ms"
    assert scale_expr("increase(x[15m]) and up offset 15m", 60) == "increase(x[15s]) and up offset 15s"
    assert scale_expr("max_over_time(x[10m:1m])", 60) == "max_over_time(x[10s:1s])"
    assert scale_expr("avg_over_time(x[1h:])", 60) == "avg_over_time(x[60s:])"
    with pytest.raises(ValueError):
        parse_duration("15 minutes")


def test_age_limits_scale_and_staleness_limits_do_not() -> None:
    age = 'time() - x_first_seen_timestamp_seconds{job="gpu"} < 900'
    assert scale_expr(age, 60) == 'time() - x_first_seen_timestamp_seconds{job="gpu"} < 15'
    assert scale_expr(scale_expr(age, 60), 1 / 60) == age
    assert scale_expr("(time() - y <= 90)", 60) == "(time() - y <= 1.5)"
    # A staleness limit measures the exporter's real-time loop; other thresholds are not durations.
    assert scale_expr("time() - y > 120", 60) == "time() - y > 120"
    assert scale_expr("x < 900 and time() - y < 900e0", 60) == "x < 900 and time() - y < 900e0"


def test_xid_age_limit_stays_equal_to_its_window(tmp_path: Path) -> None:
    """The XID rule's first-seen age limit and its `[15m]` are one window: compressed together."""
    compressed_rule_files(tmp_path, 60.0)
    for path in (RULES_DIR / "gpu.rules.yml", tmp_path / "gpu.rules.yml"):
        rules = [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
        (expr,) = [r["expr"] for r in rules if r.get("record") == "node_gpu_xid:nvidia_gpu_xid_errors:increase15m"]
        limit = re.search(r"time\(\) - nvidia_gpu_xid_first_seen_timestamp_seconds\{[^}]*\} < ([\d.]+)", expr)
        window = re.search(r"increase\(nvidia_gpu_xid_errors_total\{[^}]*\}\[(\w+)\]\)", expr)
        assert limit and window, expr
        assert float(limit.group(1)) == parse_duration(window.group(1)), expr


def test_compressed_rules_are_the_real_rules_with_shorter_durations(tmp_path: Path) -> None:
    factor = 60.0
    for path in compressed_rule_files(tmp_path, factor):
        original = yaml.safe_load((RULES_DIR / path.name).read_text())
        compressed = yaml.safe_load(path.read_text())
        assert [g["name"] for g in compressed["groups"]] == [g["name"] for g in original["groups"]]
        for group, real_group in zip(compressed["groups"], original["groups"], strict=True):
            for rule, real in zip(group["rules"], real_group["rules"], strict=True):
                # Labels, annotations, names: untouched.
                assert {k: v for k, v in rule.items() if k not in ("expr", "for")} == {
                    k: v for k, v in real.items() if k not in ("expr", "for")
                }
                # Scaling the expression's durations back gives the original expression.
                assert _seconds_spelled(scale_expr(rule["expr"], 1 / factor)) == _seconds_spelled(real["expr"])
                if "for" in real:
                    assert parse_duration(rule["for"]) == max(parse_duration(real["for"]) / factor, 5.0)
    # Prometheus accepts them.
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's prometheus (make test does)"
    check = subprocess.run([promtool, "check", "rules", *map(str, tmp_path.glob("*.yml"))], capture_output=True)
    assert check.returncode == 0, check.stderr.decode()


def test_compressed_alertmanager_config_keeps_routes_and_inhibitions(tmp_path: Path) -> None:
    real = yaml.safe_load((RULES_DIR / "alertmanager.yml").read_text())
    token = tmp_path / "token"
    token.write_text("t\n")
    config = compressed_alertmanager_config("http://127.0.0.1:1234", token)
    assert config["inhibit_rules"] == real["inhibit_rules"]
    assert config["route"]["group_by"] == real["route"]["group_by"]
    assert [r["matchers"] for r in config["route"]["routes"]] == [r["matchers"] for r in real["route"]["routes"]]
    assert config["route"]["group_interval"] == "5s" and config["route"]["routes"][0]["group_wait"] == "1s"
    hook = config["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:1234/alerts" and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"] == str(token)
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: install Debian's prometheus-alertmanager (make test does)"
    path = tmp_path / "am.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run([amtool, "check-config", str(path)], capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
