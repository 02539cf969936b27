"""Time-compressed copies of the alert rules and the Alertmanager config, for tests and emulated clusters.

The real rules wait minutes (`for: 10m`) and look back
over minutes (`[15m]`, `offset 15m`), and the real Alertmanager waits seconds to minutes before
it notifies. :func:`compressed_rule_files` and :func:`compressed_alertmanager_config` derive
copies in which every one of those durations is divided by the same factor (60 by default:
a minute becomes a second), so the pipeline behaves as the real one would, only faster: the
order in which alerts fire and notify is kept. One threshold is a duration too and is divided
likewise: an age limit `time() - <series> < N` ("stamped less than N seconds ago", the XID rule's
first-seen window, which must stay equal to its `[15m]`). A staleness limit `time() - <series> > N`
is not: it measures the exporters' own collection loop, which runs in real time. Metric names,
label matchers, other thresholds, joins, labels and annotations are left untouched
(tests/e2e/test_config.py checks that scaling the durations back gives the original files).
Two floors keep the compressed copy honest on a loaded CI machine: a `for:` is never below 5 s
(one slow scrape must not fire the `*Down` alerts) and an Alertmanager timer never below 1 s.
The XID 15-minute windows have to be compressed too: with them at 15 minutes an XID or ECC
alert could not resolve within a test.

Used by tests/harness/stack.py (the e2e pipeline, factor 60) and scripts/cluster.py (the emulated
RunPod cluster, factor 12); it lives outside tests/ so that scripts need no test code for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "alert_rules"
TIME_FACTOR = 60.0
FOR_FLOOR_SECONDS = 5.0
AM_TIMER_FLOOR_SECONDS = 1.0

# -- durations ------------------------------------------------------------------------------

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_DURATION_PART = re.compile(r"(\d+)(ms|[smhdwy])")
# A range selector or subquery ([15m], [15m:], [15m:1m]) and an offset (offset 15m).
_RANGE = re.compile(rf"\[({_DURATION})(?::({_DURATION})?)?\]")
_OFFSET = re.compile(rf"\boffset(\s+)(-?)({_DURATION})")
# An age limit in seconds: `time() - metric{...} < 900` (also `<=`); the number is a look-back window.
_AGE_LIMIT = re.compile(r"(\btime\(\)\s*-\s*[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?\s*<=?\s*)(\d+(?:\.\d+)?)(?![\w.])")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration ('1h30m', '15m', '500ms')."""
    if not re.fullmatch(_DURATION, text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text)))


def format_duration(seconds: float) -> str:
    """The shortest exact spelling Prometheus accepts, in whole milliseconds ('15s', '500ms')."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def format_seconds(seconds: float) -> str:
    """A number of seconds as a PromQL float literal, in whole milliseconds like durations ('15', '0.25')."""
    ms = max(1, round(seconds * 1000))
    return str(ms // 1000) if ms % 1000 == 0 else repr(ms / 1000)


def scale_expr(expr: str, factor: float) -> str:
    """`expr` with every range, subquery step, offset and age limit (`time() - x < N`) divided by
    `factor`; nothing else changes."""

    def rng(m: re.Match[str]) -> str:
        window = format_duration(parse_duration(m.group(1)) / factor)
        if m.group(0).endswith(":]") or m.group(2):
            step = format_duration(parse_duration(m.group(2)) / factor) if m.group(2) else ""
            return f"[{window}:{step}]"
        return f"[{window}]"

    def off(m: re.Match[str]) -> str:
        return f"offset{m.group(1)}{m.group(2)}{format_duration(parse_duration(m.group(3)) / factor)}"

    def age(m: re.Match[str]) -> str:
        return m.group(1) + format_seconds(float(m.group(2)) / factor)

    return _AGE_LIMIT.sub(age, _OFFSET.sub(off, _RANGE.sub(rng, expr)))


def compressed_rules(groups: Mapping[str, Any], factor: float, for_floor: float) -> dict[str, Any]:
    """A rule file's content with its `for:` and expression durations compressed."""
    out = json.loads(json.dumps(groups))  # a deep copy of plain YAML data
    for group in out.get("groups", []):
        if "interval" in group:
            group["interval"] = format_duration(parse_duration(group["interval"]) / factor)
        for rule in group.get("rules", []):
            rule["expr"] = scale_expr(rule["expr"], factor)
            if "for" in rule:
                rule["for"] = format_duration(max(parse_duration(rule["for"]) / factor, for_floor))
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = format_duration(parse_duration(rule["keep_firing_for"]) / factor)
    return dict(out)


def compressed_rule_files(
    dest: Path, factor: float = TIME_FACTOR, for_floor: float = FOR_FLOOR_SECONDS, source: Path = RULES_DIR
) -> list[Path]:
    """Write time-compressed copies of `source`/*.rules.yml into `dest`; never touches `source`."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in sorted(source.glob("*.rules.yml")):
        data = yaml.safe_load(path.read_text())
        target = dest / path.name
        target.write_text(
            f"# Time-compressed by scripts/time_compression.py (factor {factor:g}) from {path.name}; do not edit.\n"
            + yaml.safe_dump(compressed_rules(data, factor, for_floor), sort_keys=False, width=1000)
        )
        paths.append(target)
    return paths


def compressed_alertmanager_config(
    agent_url: str,
    token_file: Path,
    factor: float = TIME_FACTOR,
    floor: float = AM_TIMER_FLOOR_SECONDS,
    source: Path = RULES_DIR / "alertmanager.yml",
) -> dict[str, Any]:
    """alert_rules/alertmanager.yml with its receivers pointed at `agent_url` and its timers compressed.

    Routes, grouping and inhibit rules are the file's own.
    """
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    timers = ("group_wait", "group_interval", "repeat_interval")

    def scale_route(route: dict[str, Any]) -> None:
        for key in timers:
            if key in route:
                route[key] = format_duration(max(parse_duration(route[key]) / factor, floor))
        for child in route.get("routes", []):
            scale_route(child)

    scale_route(config["route"])
    glob = config.setdefault("global", {})
    if "resolve_timeout" in glob:
        glob["resolve_timeout"] = format_duration(max(parse_duration(glob["resolve_timeout"]) / factor, floor))
    for receiver in config.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{agent_url}/alerts"
            auth = hook.setdefault("http_config", {}).setdefault("authorization", {"type": "Bearer"})
            auth["credentials_file"] = str(token_file)
    return config
