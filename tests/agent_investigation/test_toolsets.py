"""Toolsets as data: read-only PromQL tools declared in YAML, validated at start, run by the
tool box like the built-in ones (against recorded series here; the agent refuses a bad file
with exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent_webhook.investigation import InvestigationConfig
from agent_webhook.investigation.prometheus import RecordedPrometheus
from agent_webhook.investigation.tools import ToolBox
from agent_webhook.investigation.toolsets import BUILTIN_TOOLS, ToolsetError, load_toolsets

GOOD = """
tools:
  - name: gpu_power_draw
    description: Power of a node's GPUs, optionally above a floor in watts.
    parameters:
      node: {type: string, pattern: "[A-Za-z0-9._-]{1,64}", description: Slurm node name}
      min_watts: {type: integer, minimum: 0, maximum: 2000, default: 0}
    required: [node]
    query: nvidia_gpu_power_watts{node=${node}} >= ${min_watts}
  - name: gpu_power_now
    description: Power of a node's GPUs now.
    parameters:
      node: {type: string, enum: [gpu-1, gpu-2]}
    query: nvidia_gpu_power_watts{node=${node}}
"""


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tools.yml"
    path.write_text(text)
    return str(path)


async def test_a_declared_tool_is_offered_validated_and_run(tmp_path: Path) -> None:
    cfg = InvestigationConfig.from_mapping({"toolsets": [_file(tmp_path, GOOD)]})
    series = [({"__name__": "nvidia_gpu_power_watts", "node": "gpu-1", "gpu": "0"}, [512.0])]
    source = RecordedPrometheus(series)
    box = ToolBox(cfg, source)
    offered = {t["function"]["name"]: t["function"] for t in box.openai_tools()}
    assert offered["gpu_power_draw"]["parameters"]["required"] == ["node"]
    # The model's arguments are checked against the declared schema before any query runs.
    assert box.validate("gpu_power_draw", {"node": 'gpu-1"} or up{x="'})
    assert box.validate("gpu_power_draw", {"node": "gpu-1", "min_watts": 5000})
    assert box.validate("gpu_power_draw", {"node": "gpu-1", "extra": 1})
    assert not box.validate("gpu_power_draw", {"node": "gpu-1"})
    # The recorded source evaluates selectors only: the rendered query reaches it as written.
    out = await box.call("gpu_power_draw", {"node": "gpu-1"})
    assert source.queries[-1] == 'nvidia_gpu_power_watts{node="gpu-1"} >= 0'
    assert not out.ok  # a comparison: the recorded source evaluates selectors only
    out = await box.call("gpu_power_now", {"node": "gpu-1"})
    assert out.ok and "512" in out.text, out.text
    assert box.validate("gpu_power_now", {"node": "gpu-3"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tools: [{name: Bad-Name, description: d, query: up}]", "name must match"),
        ("tools: [{name: prometheus_query, description: d, query: up}]", "built-in"),
        ("tools: [{name: my_tool, description: d, query: 'up{x=${node}}'}]", "every ${name} must be a parameter"),
        (
            "tools: [{name: my_tool, description: d, parameters: {node: {type: string}}, query: 'up{x=${node}}'}]",
            "needs a pattern or an enum",
        ),
        (
            "tools: [{name: my_tool, description: d, parameters: {n: {type: integer, minimum: 1}},"
            " query: 'up > ${n}'}]",
            "minimum <= maximum",
        ),
        (
            "tools: [{name: my_tool, description: d, parameters: {n: {type: integer, minimum: 1, maximum: 2}},"
            " required: [], query: 'up > ${n}'}]",
            "needs a default",
        ),
        ("tools: [{name: my_tool, description: d, query: 'up', shell: ls}]", "unknown key"),
        ("tools: [{name: my_tool, description: d, query: 'cost $ up'}]", "$$"),
        ("nope: 1", "one key, `tools`"),
        (
            "tools: [{name: my_tool, description: d, query: 'up'}, {name: my_tool, description: d, query: 'up'}]",
            "twice",
        ),
    ],
)
def test_bad_toolsets_are_refused_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ToolsetError, match=None) as caught:
        load_toolsets([_file(tmp_path, text)])
    assert message in str(caught.value) and "tools.yml" in str(caught.value), caught.value


def test_the_reserved_names_are_the_built_in_tools(tmp_path: Path) -> None:
    cfg = InvestigationConfig.from_mapping({"alertmanager_url": "http://127.0.0.1:9"})
    from agent_webhook.investigation.tools import ToolBox as Box
    from agent_webhook.model import Alert

    alert = Alert("f", "firing", {"alertname": "X"}, {}, "http://127.0.0.1:9/graph?g0.expr=up", None)
    box = Box(cfg, RecordedPrometheus([]), alert=alert, history=lambda *a, **k: [])  # type: ignore[arg-type]
    # alert_expression is offered only for an alert whose generatorURL carries its expression.
    assert set(box.names) <= BUILTIN_TOOLS and BUILTIN_TOOLS - set(box.names) <= {"alert_expression"}


def test_the_agent_exits_2_on_a_bad_toolset(tmp_path: Path) -> None:
    config = tmp_path / "agent.yml"
    config.write_text(f"db: {tmp_path / 'a.db'}\ntoolsets: [{_file(tmp_path, 'tools: [{name: X}]')}]\n")
    run = subprocess.run(
        [str(Path(sys.executable).parent / "agent-webhook"), "--config", str(config), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "tools.yml" in run.stderr and "name must match" in run.stderr
