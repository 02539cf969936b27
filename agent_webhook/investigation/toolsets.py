"""Read-only PromQL tools declared in YAML (`toolsets:` in agent.yml): operators add a tool
without Python.

    tools:
      - name: gpu_power_draw
        description: Average power of a node's GPUs over a window, against their limits.
        parameters:
          node: {type: string, pattern: "[A-Za-z0-9._-]{1,64}", description: Slurm node name}
          window_minutes: {type: integer, minimum: 1, maximum: 1440}
        required: [node]                       # default: every parameter
        query: >-
          avg_over_time(nvidia_gpu_power_watts{node=${node}}[${window_minutes}m])

A string parameter needs a `pattern` (matched in full) or an `enum`, and reaches the query as a
quoted PromQL string literal; an integer needs `minimum` and `maximum`. Every `${name}` of the
query is a declared parameter and every parameter is used; an optional parameter needs a
`default`. Files are validated at start: a problem exits 2 naming the file, the tool and the key.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent_webhook.investigation.safety import MAX_QUERY_CHARS, check_query, validate_arguments
from gpu_watchdog_core.sections import reject_unknown

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{2,47}$")
TOOL_KEYS = {"name", "description", "parameters", "required", "query"}
PARAM_KEYS = {"type", "description", "pattern", "enum", "minimum", "maximum", "default", "maxLength"}
MAX_TOOLS = 50
# The built-in tools (agent_webhook.investigation.tools): a declared tool may not take a name.
BUILTIN_TOOLS = frozenset(
    {
        "prometheus_query",
        "prometheus_range_query",
        "metric_series",
        "gpu_detail",
        "gpu_error_counters",
        "slurm_node",
        "slurm_job",
        "slurm_jobs",
        "gpu_nodes",
        "slurm_cluster",
        "alert_expression",
        "gpu_history",
        "active_alerts",
    }
)
MAX_STRING = 200


class ToolsetError(ValueError):
    pass


@dataclass(frozen=True)
class DeclaredTool:
    name: str
    description: str
    schema: dict[str, Any]  # JSON schema of the arguments (what the model sees and what is validated)
    defaults: dict[str, Any]
    query: str  # with ${name} placeholders
    source: str  # file it came from

    def render(self, args: dict[str, Any]) -> str:
        """The PromQL for validated arguments: strings quoted as literals, integers bare."""
        values = {**self.defaults, **args}
        literal = {
            key: json.dumps(value) if isinstance(value, str) else str(int(value)) for key, value in values.items()
        }
        return check_query(string.Template(self.query).substitute(literal))


def load_toolsets(paths: list[str] | tuple[str, ...], reserved: frozenset[str] = BUILTIN_TOOLS) -> list[DeclaredTool]:
    """Every tool of these files, validated; `reserved`: the built-in tool names."""
    tools: list[DeclaredTool] = []
    for path in paths:
        where = f"toolsets: {path}"
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ToolsetError(f"{where}: cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ToolsetError(f"{where}: not YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict) or set(raw) != {"tools"} or not isinstance(raw["tools"], list):
            raise ToolsetError(f"{where}: expected a mapping with one key, `tools`, a list")
        for index, item in enumerate(raw["tools"]):
            tool = _tool(item, f"{where}: tools[{index}]", path)
            if tool.name in reserved or any(t.name == tool.name for t in tools):
                raise ToolsetError(f"{where}: tool {tool.name!r} is defined twice (or is a built-in tool)")
            tools.append(tool)
    if len(tools) > MAX_TOOLS:
        raise ToolsetError(f"toolsets: {len(tools)} tools, at most {MAX_TOOLS}")
    return tools


def _tool(item: Any, where: str, path: str) -> DeclaredTool:
    if not isinstance(item, dict):
        raise ToolsetError(f"{where}: expected a mapping")
    reject_unknown(item, TOOL_KEYS, where, ToolsetError)
    name = item.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ToolsetError(f"{where}: name must match {NAME_RE.pattern}")
    where = f"{where} ({name})"
    description = item.get("description")
    if not isinstance(description, str) or not description.strip() or len(description) > 500:
        raise ToolsetError(f"{where}: description: a text of 1 to 500 characters")
    query = item.get("query")
    if not isinstance(query, str) or not query.strip() or len(query) > MAX_QUERY_CHARS:
        raise ToolsetError(f"{where}: query: a PromQL template of at most {MAX_QUERY_CHARS} characters")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise ToolsetError(f"{where}: parameters must be a mapping of name to schema")
    properties: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for pname, spec in params.items():
        properties[str(pname)], default = _parameter(spec, f"{where}: parameters.{pname}", str(pname))
        if default is not None:
            defaults[str(pname)] = default
    required = item.get("required", list(properties))
    if not isinstance(required, list) or not set(map(str, required)) <= set(properties):
        raise ToolsetError(f"{where}: required must list declared parameters")
    for pname in properties:
        if pname not in required and pname not in defaults:
            raise ToolsetError(f"{where}: parameters.{pname}: an optional parameter needs a default")
    try:
        used = {
            m.group("named") or m.group("braced")
            for m in string.Template.pattern.finditer(query)
            if m.group("named") or m.group("braced")
        }
        if any(m.group("invalid") is not None for m in string.Template.pattern.finditer(query)):
            raise ValueError("a `$` that is not ${name} (write $$ for a literal $)")
    except ValueError as exc:
        raise ToolsetError(f"{where}: query: {exc}") from None
    if used != set(properties):
        raise ToolsetError(
            f"{where}: query uses {sorted(used) or 'no parameter'}, parameters are {sorted(properties) or 'none'}:"
            " every ${name} must be a parameter and every parameter used"
        )
    schema = {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}
    tool = DeclaredTool(name, description.strip(), schema, defaults, query, path)
    # A dry render with each parameter's example value must give a query the guardrails accept.
    try:
        tool.render({k: _example(v) for k, v in properties.items()})
    except Exception as exc:
        raise ToolsetError(f"{where}: query: {exc}") from None
    return tool


def _parameter(spec: Any, where: str, name: str) -> tuple[dict[str, Any], Any]:
    if not isinstance(spec, dict):
        raise ToolsetError(f"{where}: expected a mapping (type, description, ...)")
    reject_unknown(spec, PARAM_KEYS, where, ToolsetError)
    kind = spec.get("type")
    out: dict[str, Any] = {"type": kind, "description": str(spec.get("description") or name)[:200]}
    if kind == "string":
        if "enum" in spec:
            enum = spec["enum"]
            if not isinstance(enum, list) or not enum or not all(isinstance(v, str) for v in enum):
                raise ToolsetError(f"{where}: enum must be a non-empty list of strings")
            out["enum"] = enum
        elif isinstance(spec.get("pattern"), str):
            try:
                re.compile(spec["pattern"])
            except re.error as exc:
                raise ToolsetError(f"{where}: pattern: {exc}") from None
            out["pattern"] = f"^(?:{spec['pattern']})$"  # the whole value, not a part of it
        else:
            raise ToolsetError(f"{where}: a string parameter needs a pattern or an enum")
        out["maxLength"] = min(int(spec.get("maxLength", MAX_STRING)), MAX_STRING)
    elif kind == "integer":
        low, high = spec.get("minimum"), spec.get("maximum")
        if not (isinstance(low, int) and isinstance(high, int)) or isinstance(low, bool) or low > high:
            raise ToolsetError(f"{where}: an integer parameter needs integer minimum <= maximum")
        out.update(minimum=low, maximum=high)
    else:
        raise ToolsetError(f"{where}: type must be string or integer, got {kind!r}")
    default = spec.get("default")
    if default is not None:
        errors = validate_arguments({"type": "object", "properties": {name: out}}, {name: default})
        if errors:
            raise ToolsetError(f"{where}: default: {errors[0]}")
    return out, default


def _example(schema: dict[str, Any]) -> Any:
    if schema["type"] == "integer":
        return schema["minimum"]
    return schema["enum"][0] if "enum" in schema else "x"
