"""The read-only evidence tools, shared by the deterministic gathering and the LLM loop.

Each tool has a JSON schema (what the model sees), validates its arguments, runs under a
timeout, caps and redacts its output, and records an `Evidence` entry. No tool takes a URL:
they reach only the configured Prometheus/Alertmanager base URLs (and the allowlist).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent_webhook.investigation.config import InvestigationConfig
from agent_webhook.investigation.history import (
    HistoryLookup,
    HistoryQuery,
    history_line,
    known_identity,
    same_gpu,
    slim,
)
from agent_webhook.investigation.prometheus import (
    EvidenceSource,
    PrometheusQueryError,
    PrometheusUnavailable,
    PromResult,
    Series,
    read_capped,
)
from agent_webhook.investigation.safety import (
    GPU_RE,
    JOB_ID_RE,
    MAX_QUERY_CHARS,
    METRIC_RE,
    NODE_RE,
    GuardrailError,
    URLAllowlist,
    cap,
    cap_arguments,
    check_gpu,
    check_job_id,
    check_metric,
    check_node,
    check_query,
    clean,
    label_value,
    validate_arguments,
)
from agent_webhook.investigation.slurm import MAX_JOB_ROWS, Scontrol, SlurmUnavailable
from agent_webhook.investigation.toolsets import DeclaredTool
from agent_webhook.model import Alert, Evidence

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, dict[str, Any], bool, float], None]


@dataclass
class ToolOutput:
    text: str
    data: Any = None
    ok: bool = True


@dataclass
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    handler: Callable[[dict[str, Any]], Awaitable[ToolOutput]]

    def openai_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or [], "additionalProperties": False}


NODE_SCHEMA = {"type": "string", "pattern": NODE_RE.pattern, "description": "Slurm node name (the `node` label)"}
GPU_SCHEMA = {"type": "string", "pattern": GPU_RE.pattern, "description": "GPU index (the `gpu` label)"}
QUERY_SCHEMA = {"type": "string", "maxLength": MAX_QUERY_CHARS, "description": "PromQL expression"}

GPU_METRICS = "nvidia_gpu_.+"
# The error counters, one query per family: a GPU has dozens of NVLink counters (one per link
# and error type), which would otherwise fill the series cap before the XID and ECC counters.
XID_COUNTER = "nvidia_gpu_xid_errors_total"
MEMORY_COUNTERS = "nvidia_gpu_(ecc_errors|pcie_replay_errors)_total"
NVLINK_COUNTER = "nvidia_gpu_nvlink_errors_total"
XID_FIRST_SEEN = "nvidia_gpu_xid_first_seen_timestamp_seconds"
SLURM_CLUSTER = "slurm_up|slurm_nodes|slurm_scheduler_.+|slurm_jobs_pending|slurm_partition_gpus_.+"


def alert_expression(alert: Alert) -> str | None:
    """The rule expression from the alert's generatorURL (`g0.expr`); the URL itself is never fetched."""
    if not alert.generator_url:
        return None
    query = urllib.parse.urlsplit(alert.generator_url).query
    values = urllib.parse.parse_qs(query).get("g0.expr")
    if not values or not values[0].strip():
        return None
    try:
        return check_query(values[0])
    except GuardrailError:
        return None


def counter_increase(values: list[tuple[float, float]], window_start: float, *, born_new: bool = False) -> float:
    """Reset-aware increase of a counter's samples over a window, as Prometheus's increase() sees it.

    A series whose first sample lies inside the window counts from that sample: its first value
    is history (an exporter that starts reports what the GPU counted since boot), not an increase.
    `born_new` says the series was created by an event inside the window (an XID counter appears
    at its first XID, already at 1; see `xid_born_new`): then its first value counts too, as the
    alert rule `node_gpu_xid:nvidia_gpu_xid_errors:increase15m` counts it.
    """
    if not values:
        return 0.0
    total = 0.0
    for (_, prev), (_, cur) in itertools.pairwise(values):
        total += cur - prev if cur >= prev else cur
    if born_new and values[0][0] > window_start:
        total += values[0][1]
    return total


def xid_born_new(first_sample: float, window_start: float, first_seen: float | None, up_since: float | None) -> bool:
    """Whether an XID series first scraped at `first_sample` was created by an XID inside the window.

    The exporter's own stamp (`nvidia_gpu_xid_first_seen_timestamp_seconds`) decides when it is
    there; without it, the series is new when Prometheus had scraped the exporter before it
    appeared (`up_since`, the first `up` sample in the window): the XID happened while watched.
    A series present at the first scrape of an exporter is history, never an increase.
    """
    if first_sample <= window_start:
        return False
    if first_seen is not None:
        return first_seen >= window_start
    return up_since is not None and up_since < first_sample


@dataclass
class CounterIncrease:
    labels: dict[str, str]
    increase: float
    last: float


def _increase(series: Series, window_start: float) -> CounterIncrease:
    return CounterIncrease(series.labels, counter_increase(series.values, window_start), series.last)


@dataclass
class ToolBox:
    cfg: InvestigationConfig
    source: EvidenceSource
    alert: Alert | None = None
    scontrol: Scontrol | None = None
    on_event: ProgressCallback | None = None
    history: HistoryLookup | None = None  # the agent's earlier findings (the service's store)
    evidence: list[Evidence] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    _specs: dict[str, ToolSpec] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        specs = [
            ToolSpec(
                "prometheus_query",
                "Instant PromQL query against the cluster's Prometheus (read-only). Result capped.",
                _obj({"query": QUERY_SCHEMA}, ["query"]),
                self._prometheus_query,
            ),
            ToolSpec(
                "prometheus_range_query",
                "PromQL range query ending now; at most a bounded number of points per series.",
                _obj(
                    {
                        "query": QUERY_SCHEMA,
                        "range_seconds": {"type": "integer", "minimum": 60, "maximum": 604800},
                        "step_seconds": {"type": "integer", "minimum": 1, "maximum": 86400},
                    },
                    ["query", "range_seconds"],
                ),
                self._prometheus_range_query,
            ),
            ToolSpec(
                "metric_series",
                "Current series of one metric by name, optionally for one node (validated names, no PromQL).",
                _obj(
                    {"metric": {"type": "string", "pattern": METRIC_RE.pattern}, "node": NODE_SCHEMA},
                    ["metric"],
                ),
                self._metric_series,
            ),
            ToolSpec(
                "gpu_detail",
                "Every current nvidia_gpu_* gauge (not the counters) of a node's GPU (or all GPUs of the node).",
                _obj({"node": NODE_SCHEMA, "gpu": GPU_SCHEMA}, ["node"]),
                self._gpu_detail,
            ),
            ToolSpec(
                "gpu_error_counters",
                "Increase of the XID, ECC, PCIe replay and NVLink error counters of a node's GPU(s) over a window.",
                _obj(
                    {
                        "node": NODE_SCHEMA,
                        "gpu": GPU_SCHEMA,
                        "window_minutes": {"type": "integer", "minimum": 5, "maximum": 1440},
                    },
                    ["node"],
                ),
                self._gpu_error_counters,
            ),
            ToolSpec(
                "slurm_node",
                "Slurm state of a node: states, drain/down reason, GPU allocation and the jobs on its GPUs.",
                _obj({"node": NODE_SCHEMA}, ["node"]),
                self._slurm_node,
            ),
            ToolSpec(
                "slurm_job",
                "Detail of one Slurm job (user, account, node, GPUs).",
                _obj({"job_id": {"type": "string", "pattern": JOB_ID_RE.pattern}}, ["job_id"]),
                self._slurm_job,
            ),
            ToolSpec(
                "slurm_jobs",
                "The Slurm jobs on a node (running, completing, suspended) and the cluster's pending GPU "
                "jobs with their reasons: who is affected by a node's fault, and whether work waits for GPUs.",
                _obj({"node": NODE_SCHEMA}, ["node"]),
                self._slurm_jobs,
            ),
            ToolSpec(
                "gpu_nodes",
                "Which nodes have GPU N, and which of them have alerts firing for it or report it lost "
                "(nvidia_gpu_up 0) or an XID (nvidia_gpu_last_xid).",
                _obj({"gpu": GPU_SCHEMA}, ["gpu"]),
                self._gpu_nodes,
            ),
            ToolSpec(
                "slurm_cluster",
                "Cluster-wide Slurm health: slurm_up, node counts by state, scheduler cycle times, pending "
                "jobs by reason, partition GPU allocation, and the scrape targets that are down.",
                _obj({}),
                self._slurm_cluster,
            ),
        ]
        if self.alert is not None and alert_expression(self.alert):
            specs.append(
                ToolSpec(
                    "alert_expression",
                    "Evaluate the firing alert's own rule expression (from its generatorURL) now.",
                    _obj({}),
                    self._alert_expression,
                )
            )
        if self.history is not None:
            specs.append(
                ToolSpec(
                    "gpu_history",
                    "The agent's earlier findings for a node and its GPU (the GPU matched by UUID and serial, "
                    "wherever it was): recurrences change what to do (a second XID 79 within 30 days is an RMA).",
                    _obj(
                        {
                            "node": NODE_SCHEMA,
                            "gpu": GPU_SCHEMA,
                            "days": {"type": "integer", "minimum": 1, "maximum": 365},
                        },
                        ["node"],
                    ),
                    self._gpu_history,
                )
            )
        if self.cfg.alertmanager_url:
            specs.append(
                ToolSpec(
                    "active_alerts",
                    "Alerts active in Alertmanager now (not silenced or inhibited), optionally for one node or GPU.",
                    _obj({"node": NODE_SCHEMA, "gpu": GPU_SCHEMA}),
                    self._active_alerts,
                )
            )
        # Operators' own read-only PromQL tools (toolsets: in agent.yml), validated at start.
        specs += [
            ToolSpec(t.name, t.description, t.schema, functools.partial(self._declared, t)) for t in self.cfg.toolsets
        ]
        self._specs = {s.name: s for s in specs}
        self._allowlist = URLAllowlist([self.cfg.prometheus_url, self.cfg.alertmanager_url, *self.cfg.allowed_urls])

    # --- the dispatcher -------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def openai_tools(self) -> list[dict[str, Any]]:
        return [s.openai_schema() for s in self._specs.values()]

    def validate(self, name: str, args: Any) -> list[str]:
        spec = self._specs.get(name)
        if spec is None:
            return [f"unknown tool {name[:60]!r}; available: {', '.join(self._specs)}"]
        return validate_arguments(spec.parameters, args)

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutput:
        """Run one tool; never raises: failures come back as a not-ok output the model can read."""
        started = time.monotonic()
        errors = self.validate(name, args)
        if errors:
            output = ToolOutput("rejected: " + "; ".join(errors), ok=False)
        else:
            try:
                output = await asyncio.wait_for(self._specs[name].handler(args), self.cfg.tool_timeout_seconds)
            except GuardrailError as exc:
                output = ToolOutput(f"rejected: {exc}", ok=False)
            except PrometheusQueryError as exc:
                output = ToolOutput(f"query error: {exc}", ok=False)
            except PrometheusUnavailable as exc:
                self.unavailable["prometheus"] = str(exc)
                output = ToolOutput(f"unavailable: {exc}", ok=False)
            except SlurmUnavailable as exc:
                self.unavailable["slurm"] = str(exc)
                output = ToolOutput(f"unavailable: {exc}", ok=False)
            except TimeoutError:
                self.unavailable[name] = f"timed out after {self.cfg.tool_timeout_seconds:g}s"
                output = ToolOutput(f"timed out after {self.cfg.tool_timeout_seconds:g}s", ok=False)
        output.text = cap(clean(output.text), self.cfg.tool_output_chars)
        duration = time.monotonic() - started
        self.evidence.append(
            Evidence(
                tool=name[:60],
                arguments=cap_arguments(args),
                excerpt=output.text,
                ok=output.ok,
                duration_seconds=round(duration, 4),
            )
        )
        log.debug(
            "tool call",
            extra={
                "tool": name[:60],
                "ok": output.ok,
                "duration_seconds": round(duration, 4),
                "arguments": cap_arguments(args, 500),
            },
        )
        if self.on_event is not None:
            self.on_event(name, cap_arguments(args, 500), output.ok, duration)
        return output

    def record_rejected(self, name: str, args: Any, reason: str) -> None:
        """A call refused before it ran (malformed arguments, unknown tool): still evidence."""
        self.evidence.append(
            Evidence(
                tool=name[:60],
                arguments=cap_arguments(args),
                excerpt=cap(clean(f"rejected: {reason}"), 500),
                ok=False,
            )
        )
        if self.on_event is not None:
            self.on_event(name, cap_arguments(args, 500), False, 0.0)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    # --- tools ----------------------------------------------------------------------------

    def _render(self, result: PromResult) -> str:
        return result.render(self.cfg.tool_output_chars)

    async def _prometheus_query(self, args: dict[str, Any]) -> ToolOutput:
        result = await self.source.instant(args["query"])
        return ToolOutput(self._render(result), result)

    async def _declared(self, tool: DeclaredTool, args: dict[str, Any]) -> ToolOutput:
        result = await self.source.instant(tool.render(args))
        return ToolOutput(self._render(result), result)

    async def _prometheus_range_query(self, args: dict[str, Any]) -> ToolOutput:
        end = time.time()
        span = float(args["range_seconds"])
        step = float(args.get("step_seconds") or max(span / 100, 1))
        result = await self.source.range(args["query"], end - span, end, step)
        return ToolOutput(self._render(result), result)

    async def _alert_expression(self, args: dict[str, Any]) -> ToolOutput:
        assert self.alert is not None
        expr = alert_expression(self.alert)
        if not expr:
            return ToolOutput("the alert carries no rule expression", ok=False)
        result = await self.source.instant(expr)
        return ToolOutput(f"expr: {expr}\n{self._render(result)}", result)

    async def _metric_series(self, args: dict[str, Any]) -> ToolOutput:
        selector = check_metric(args["metric"])
        if args.get("node") is not None:
            selector += f"{{node={label_value(check_node(args['node']))}}}"
        result = await self.source.instant(selector)
        return ToolOutput(self._render(result), result)

    @staticmethod
    def _gpu_matchers(args: dict[str, Any]) -> str:
        matchers = f"node={label_value(check_node(args['node']))}"
        if args.get("gpu") is not None:
            matchers += f",gpu={label_value(check_gpu(args['gpu']))}"
        return matchers

    async def _gpu_detail(self, args: dict[str, Any]) -> ToolOutput:
        # Gauges only: the counters (NVLink alone has dozens per GPU) are gpu_error_counters' job
        # and would crowd nvidia_gpu_up and nvidia_gpu_last_xid out of the series cap.
        result = await self.source.instant(
            f'{{__name__=~"{GPU_METRICS}",__name__!~".+_total",{self._gpu_matchers(args)}}}'
        )
        return ToolOutput(self._render(result), result)

    async def _gpu_error_counters(self, args: dict[str, Any]) -> ToolOutput:
        minutes = int(args.get("window_minutes") or 60)
        now = time.time()
        window_start = now - minutes * 60
        matchers = self._gpu_matchers(args)
        window = f"[{minutes}m]"
        xids = await self.source.instant(f"{XID_COUNTER}{{{matchers}}}{window}", at=now)
        memory = await self.source.instant(f'{{__name__=~"{MEMORY_COUNTERS}",{matchers}}}{window}', at=now)
        nvlink = await self.source.instant(f"{NVLINK_COUNTER}{{{matchers}}}{window}", at=now)
        born = await self._xid_births(xids, check_node(args["node"]), matchers, window, window_start)
        increases = [
            CounterIncrease(s.labels, counter_increase(s.values, window_start, born_new=born.get(i, False)), s.last)
            for i, s in enumerate(xids.series)
            if s.values
        ]
        increases += [_increase(s, window_start) for s in memory.series if s.values]
        links = [_increase(s, window_start) for s in nvlink.series if s.values]
        lines = [f"error counters over the last {minutes}m (increase, current value):"]
        lines += [self._counter_line(inc) for inc in increases]
        if not increases:
            lines.append("(no XID, ECC or PCIe replay counter series)")
        for result, what in ((xids, "XID"), (memory, "ECC/PCIe")):
            if result.dropped_series:
                lines.append(f"... {result.dropped_series} more {what} counter series not shown (name the GPU)")
        # NVLink: only the counters that moved; dozens of quiet links say nothing.
        moved = [inc for inc in links if inc.increase > 0]
        lines += [self._counter_line(inc) for inc in moved]
        if links:
            unread = f", {nvlink.dropped_series} not read (series cap)" if nvlink.dropped_series else ""
            lines.append(f"NVLink error counters: {len(moved)} increased, {len(links) - len(moved)} did not{unread}")
        return ToolOutput("\n".join(lines), increases + moved)

    @staticmethod
    def _counter_line(inc: CounterIncrease) -> str:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(inc.labels.items()) if k != "__name__")
        return f"{inc.labels.get('__name__', '')}{{{labels}}} increase={inc.increase:g} now={inc.last:g}"

    async def _xid_births(
        self, xids: PromResult, node: str, matchers: str, window: str, window_start: float
    ) -> dict[int, bool]:
        """For each XID series first scraped inside the window: was it created by a new XID?"""
        late = [i for i, s in enumerate(xids.series) if s.values and s.values[0][0] > window_start]
        if not late:
            return {}
        stamps = await self.source.instant(f"{XID_FIRST_SEEN}{{{matchers}}}")
        first_seen = {
            (s.labels.get("node"), s.labels.get("gpu"), s.labels.get("xid")): s.last
            for s in stamps.series
            if not math.isnan(s.last)
        }
        up = await self.source.instant(f'up{{job="gpu",node={label_value(node)}}}{window}')
        up_since = min((s.values[0][0] for s in up.series if s.values), default=None)
        born: dict[int, bool] = {}
        for i in late:
            s = xids.series[i]
            key = (s.labels.get("node"), s.labels.get("gpu"), s.labels.get("xid"))
            born[i] = xid_born_new(s.values[0][0], window_start, first_seen.get(key), up_since)
        return born

    async def _gpu_nodes(self, args: dict[str, Any]) -> ToolOutput:
        gpu = label_value(check_gpu(args["gpu"]))
        up = await self.source.instant(f"nvidia_gpu_up{{gpu={gpu}}}")
        last_xid = await self.source.instant(f"nvidia_gpu_last_xid{{gpu={gpu}}}")
        alerts = await self.source.instant(f'ALERTS{{alertstate="firing",gpu={gpu}}}')
        nodes = sorted({s.labels["node"] for s in up.series if s.labels.get("node")})
        troubled: dict[str, list[str]] = {}
        for s in alerts.series:
            if s.labels.get("node"):
                troubled.setdefault(s.labels["node"], []).append(f"alert {s.labels.get('alertname', '?')} firing")
        for s in up.series:
            if s.labels.get("node") and s.last == 0:
                troubled.setdefault(s.labels["node"], []).append("nvidia_gpu_up = 0")
        for s in last_xid.series:
            if s.labels.get("node") and s.last > 0:
                troubled.setdefault(s.labels["node"], []).append(f"last XID = {s.last:g}")
        reasons = {node: sorted(set(why)) for node, why in sorted(troubled.items())}
        # More nodes than the series cap shows: the count says so (the few in trouble come from
        # the much smaller ALERTS and gauge answers).
        count = len(nodes) + up.dropped_series
        data: dict[str, Any] = {"nodes": nodes, "node_count": count, "troubled": reasons}
        lines = [f"nodes with GPU {args['gpu']}: {count} ({', '.join(nodes[:20]) or 'none'})"]
        lines += [f"{node}: {'; '.join(why)}" for node, why in reasons.items()]
        return ToolOutput("\n".join(lines), data)

    async def _gpu_identity(self, node: str, gpu: str) -> tuple[str | None, str | None]:
        """(uuid, serial) of the node's GPU: the alert's labels, else the GPU exporter's series."""
        uuid = serial = None
        if self.alert is not None and self.alert.node == node and self.alert.gpu == gpu:
            uuid = known_identity(self.alert.labels.get("uuid"))
            serial = known_identity(self.alert.labels.get("serial"))
        if uuid and serial:
            return uuid, serial
        matchers = f"node={label_value(node)},gpu={label_value(gpu)}"
        try:
            # nvidia_gpu_info and nvidia_gpu_up stay exported for a GPU that is down.
            found = await self.source.instant(f'{{__name__=~"nvidia_gpu_info|nvidia_gpu_up",{matchers}}}')
        except (PrometheusUnavailable, PrometheusQueryError):
            return uuid, serial  # read by node and index then; the other tools report Prometheus
        for series in found.series:
            uuid = uuid or known_identity(series.labels.get("uuid"))
            serial = serial or known_identity(series.labels.get("serial"))
        return uuid, serial

    async def _gpu_history(self, args: dict[str, Any]) -> ToolOutput:
        assert self.history is not None
        node = check_node(args["node"])
        gpu = check_gpu(args["gpu"]) if args.get("gpu") is not None else None
        days = int(args.get("days") or 30)
        uuid, serial = await self._gpu_identity(node, gpu) if gpu is not None else (None, None)
        query = HistoryQuery(node=node, gpu=gpu, uuid=uuid, serial=serial, since=time.time() - days * 86400)
        try:
            found = [slim(f) for f in await self.history(query) if isinstance(f, dict)]
        except Exception as exc:  # a store that cannot be read: the investigation goes on without it
            self.unavailable["history"] = f"{type(exc).__name__}: {exc}"[:300]
            return ToolOutput(f"unavailable: the agent's findings could not be read ({type(exc).__name__})", ok=False)
        mine = [f for f in found if gpu is not None and same_gpu(f, node, gpu, uuid, serial)]
        others = [f for f in found if f not in mine and f.get("node") == node]
        ident = ", ".join(p for p in (uuid and f"uuid {uuid}", serial and f"serial {serial}") if p)
        lines = [f"earlier findings over the last {days} days, newest first"]
        if gpu is not None:
            lines.append(f"GPU {gpu} of {node}: {ident or 'UUID and serial unknown: matched on node and index'}")
            lines.append(f"of this GPU ({len(mine)}):")
            lines += [f"  {history_line(f)}" for f in mine] or ["  (none)"]
        lines.append(f"of {'other GPUs of ' if gpu is not None else ''}the node ({len(others)}):")
        lines += [f"  {history_line(f)}" for f in others] or ["  (none)"]
        return ToolOutput("\n".join(lines), {"uuid": uuid, "serial": serial, "gpu": mine, "node": others})

    async def _slurm_node(self, args: dict[str, Any]) -> ToolOutput:
        node = check_node(args["node"])
        if self.cfg.slurm.mode == "scontrol":
            scontrol = self.scontrol or Scontrol(self.cfg.slurm.bin_dir, self.cfg.slurm.command_timeout_seconds)
            shown = await scontrol.show_node(node)
            shown_data = {
                "states": node_states([shown.fields.get("State", "")]),
                "reason": shown.fields.get("Reason") or None,
            }
            return ToolOutput(shown.text, shown_data)
        result = await self.source.instant(f'{{__name__=~"slurm_node_.+",node={label_value(node)}}}')
        jobs = await self.source.instant(f"slurm_job_gpu_info{{node={label_value(node)}}}")
        gpus = await self.source.instant(f"nvidia_gpu_info{{node={label_value(node)}}}")
        up = await self.source.instant(f"up{{node={label_value(node)}}}")
        states = node_states(
            [s.labels.get("state", "") for s in result.series if s.name == "slurm_node_state" and s.last]
            + [s.labels.get("flag", "") for s in result.series if s.name == "slurm_node_state_flag" and s.last]
        )
        reasons = [s.labels.get("reason", "") for s in result.series if s.name == "slurm_node_reason_info" and s.last]
        data: dict[str, Any] = {
            "states": states,
            "reason": reasons[0] if reasons else None,
            "jobs": gpu_indexed_jobs(jobs, gpus),
            "targets_up": {s.labels.get("job", ""): s.last for s in up.series},
        }
        text = "\n".join(
            [
                self._render(result),
                "jobs on GPUs (slurm_job_gpu_info: gpu is Slurm's IDX = minor_number, not the NVML index):",
                self._render(jobs),
                "the same jobs by the GPU exporter's gpu (NVML index, matched on minor_number):",
                "\n".join(
                    f"gpu {j.get('gpu_index', '? (minor number not in nvidia_gpu_info)')}: job {j.get('job_id')} "
                    f"of {j.get('user')} (minor_number {j.get('minor_number', '?')})"
                    for j in data["jobs"]
                )
                or "(none)",
                "scrape targets of the node (up):",
                self._render(up),
            ]
        )
        return ToolOutput(text, data)

    async def _slurm_job(self, args: dict[str, Any]) -> ToolOutput:
        job_id = check_job_id(args["job_id"])
        if self.cfg.slurm.mode == "scontrol":
            scontrol = self.scontrol or Scontrol(self.cfg.slurm.bin_dir, self.cfg.slurm.command_timeout_seconds)
            shown = await scontrol.show_job(job_id)
            return ToolOutput(shown.text, shown.fields)
        result = await self.source.instant(f"slurm_job_gpu_info{{job_id={label_value(job_id)}}}")
        return ToolOutput(self._render(result), [dict(s.labels) for s in result.series])

    async def _slurm_jobs(self, args: dict[str, Any]) -> ToolOutput:
        node = check_node(args["node"])
        if self.cfg.slurm.mode == "scontrol":
            slurm = self.scontrol or Scontrol(self.cfg.slurm.bin_dir, self.cfg.slurm.command_timeout_seconds)
            running = await slurm.jobs_on_node(node)
            pending = await slurm.pending_gpu_jobs()
            data = {"node": node, "jobs": running[:MAX_JOB_ROWS], "pending_gpu_jobs": pending[:MAX_JOB_ROWS]}
            text = "\n".join(
                [
                    f"jobs on {node} ({len(running)}):",
                    *(_job_row(j) for j in running[:MAX_JOB_ROWS]),
                    *([f"... {len(running) - MAX_JOB_ROWS} more"] if len(running) > MAX_JOB_ROWS else []),
                    f"pending GPU jobs ({len(pending)}):",
                    *(_job_row(j) for j in pending[:MAX_JOB_ROWS]),
                    *([f"... {len(pending) - MAX_JOB_ROWS} more"] if len(pending) > MAX_JOB_ROWS else []),
                ]
            )
            return ToolOutput(text, data)
        # From the Slurm exporter: the GPU jobs on the node and the pending jobs by partition and reason.
        gpu_jobs = await self.source.instant(f"slurm_job_gpu_info{{node={label_value(node)}}}")
        queued = await self.source.instant('{__name__=~"slurm_jobs_pending|slurm_jobs_pending_gpus"}')
        text = (
            f"GPU jobs on {node} (slurm_job_gpu_info):\n{self._render(gpu_jobs)}\n"
            f"pending jobs by partition and reason:\n{self._render(queued)}"
        )
        data = {
            "node": node,
            "jobs": [dict(s.labels) for s in gpu_jobs.series],
            "pending": [{**s.labels, "value": s.last} for s in queued.series],
        }
        return ToolOutput(text, data)

    async def _slurm_cluster(self, args: dict[str, Any]) -> ToolOutput:
        result = await self.source.instant(f'{{__name__=~"{SLURM_CLUSTER}"}}')
        up = await self.source.instant("up")
        down = [s for s in up.series if s.last == 0]
        text = (
            self._render(result)
            + "\nscrape targets down:\n"
            + (self._render(PromResult("vector", down)) if down else "(none)")
        )
        return ToolOutput(text, {"series": result.series, "down_targets": [dict(s.labels) for s in down]})

    async def _active_alerts(self, args: dict[str, Any]) -> ToolOutput:
        assert self.cfg.alertmanager_url
        url = self._allowlist.check(f"{self.cfg.alertmanager_url}/api/v2/alerts")
        params = [("active", "true"), ("silenced", "false"), ("inhibited", "false")]
        if args.get("node"):
            params.append(("filter", f"node={label_value(check_node(args['node']))}"))
        if args.get("gpu"):
            params.append(("filter", f"gpu={label_value(check_gpu(args['gpu']))}"))
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.tool_timeout_seconds))
        try:
            headers = self.cfg.alertmanager_auth.headers() if self.cfg.alertmanager_auth else None
            async with self._session.get(url, params=params, allow_redirects=False, headers=headers) as resp:
                body = await read_capped(resp.content, 2 * 1024 * 1024)
                if resp.status in (401, 403):
                    hint = "wrong alertmanager_basic_auth" if headers else "set alertmanager_basic_auth in agent.yml"
                    self.unavailable["alertmanager"] = f"Alertmanager answered HTTP {resp.status} ({hint})"
                    return ToolOutput(f"unavailable: {self.unavailable['alertmanager']}", ok=False)
                if resp.status != 200:
                    raise PrometheusUnavailable(f"Alertmanager answered HTTP {resp.status}")
                alerts = json.loads(body)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self.unavailable["alertmanager"] = f"{type(exc).__name__}: {exc}"[:300]
            return ToolOutput(f"unavailable: Alertmanager: {type(exc).__name__}", ok=False)
        lines = []
        for item in alerts[: self.cfg.max_series] if isinstance(alerts, list) else []:
            labels = item.get("labels") or {}
            summary = (item.get("annotations") or {}).get("summary", "")
            lines.append(
                f"{labels.get('alertname', '?')} node={labels.get('node', '')} gpu={labels.get('gpu', '')} "
                f"severity={labels.get('severity', '')} since={item.get('startsAt', '')} summary={summary}"
            )
        return ToolOutput("\n".join(lines) or "(no active alerts)", alerts)


def series_value(series: list[Series], name: str, **labels: str) -> float | None:
    """The value of the first series named `name` whose labels include `labels`, if any."""
    for s in series:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()) and not math.isnan(s.last):
            return s.last
    return None


def node_states(values: list[str]) -> list[str]:
    """Slurm states and flags, normalised: `IDLE+DRAIN`, `idle*` (the `*` means not responding)."""
    found: set[str] = set()
    for value in values:
        for raw in value.lower().split("+"):
            if raw.strip().endswith("*"):
                found.add("not_responding")
            part = raw.strip().rstrip("*")
            if part:
                found.add(part)
    return sorted(found)


def gpu_indexed_jobs(jobs: PromResult, gpus: PromResult) -> list[dict[str, str]]:
    """slurm_job_gpu_info rows, each with `gpu_index`: the GPU exporter's `gpu` (NVML index).

    Slurm's `gpu` is its GRES IDX, the device minor number (N of /dev/nvidiaN), which differs from
    the NVML index where the driver probed the GPUs in another order than PCI. The GPU exporter's
    nvidia_gpu_info carries both; a job gets `gpu_index` only where its minor number names
    exactly one GPU there (proven), never by assuming the two numbers agree.
    """
    by_minor: dict[str, set[str]] = {}
    for s in gpus.series:
        minor, gpu = s.labels.get("minor_number", ""), s.labels.get("gpu", "")
        if minor and gpu:
            by_minor.setdefault(minor, set()).add(gpu)
    out = []
    for s in jobs.series:
        job = dict(s.labels)
        found = by_minor.get(job.get("minor_number", ""), set())
        if len(found) == 1:
            job["gpu_index"] = next(iter(found))
        out.append(job)
    return out


def _job_row(job: dict[str, str]) -> str:
    return "  " + " ".join(f"{key}={value}" for key, value in job.items())
