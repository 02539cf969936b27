"""Read-only access to Prometheus's HTTP API with bounded results, and a recorded stand-in.

`PrometheusAPI` talks to a real server (only URLs the allowlist admits). `RecordedPrometheus`
answers plain selectors from series held in memory, for replaying an incident's evidence
(the eval set) without a server; it refuses anything it cannot evaluate faithfully.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from agent_webhook.investigation.config import BasicAuthConfig
from agent_webhook.investigation.safety import GuardrailError, URLAllowlist, check_query

MAX_BODY_BYTES = 8 * 1024 * 1024


async def read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first `limit + 1` bytes when it is larger than `limit`.

    `StreamReader.read(n)` returns what has arrived so far (often one chunk), not n bytes: a
    body that arrives in several pieces (any large Prometheus answer) must be gathered to EOF.
    """
    body = bytearray()
    while len(body) <= limit:
        chunk = await stream.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


class PrometheusUnavailable(Exception):
    """Prometheus cannot be reached or failed (connection, timeout, 5xx)."""


class PrometheusQueryError(Exception):
    """Prometheus rejected the query (a 4xx): the query is wrong, the server is fine."""


@dataclass
class Series:
    labels: dict[str, str]
    values: list[tuple[float, float]]  # (timestamp, value); one pair for an instant vector

    @property
    def last(self) -> float:
        return self.values[-1][1] if self.values else math.nan

    @property
    def name(self) -> str:
        return self.labels.get("__name__", "")


@dataclass
class PromResult:
    result_type: str
    series: list[Series] = field(default_factory=list)
    dropped_series: int = 0
    dropped_points: int = 0
    scalar: float | None = None

    def render(self, limit_chars: int) -> str:
        """Compact text for a prompt or evidence excerpt: one line per series."""
        lines: list[str] = []
        if self.scalar is not None:
            lines.append(f"scalar {self.scalar:g}")
        for s in self.series:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()) if k != "__name__")
            head = f"{s.name}{{{labels}}}"
            if len(s.values) == 1:
                lines.append(f"{head} {s.values[0][1]:g}")
            else:
                points = " ".join(f"{v:g}" for _, v in s.values)
                span = f"@{s.values[0][0]:.0f}..{s.values[-1][0]:.0f}" if s.values else ""
                lines.append(f"{head} [{len(s.values)} points {span}] {points}")
        if self.dropped_series:
            lines.append(f"... {self.dropped_series} more series not shown (narrow the query)")
        if self.dropped_points:
            lines.append(f"... {self.dropped_points} points dropped (range too long for the point cap)")
        if not lines:
            lines.append("(empty result)")
        text = "\n".join(lines)
        if len(text) > limit_chars:
            text = text[:limit_chars] + f"\n... [truncated {len(text) - limit_chars} characters]"
        return text


class EvidenceSource(Protocol):
    async def instant(self, query: str, at: float | None = None) -> PromResult: ...

    async def range(self, query: str, start: float, end: float, step: float) -> PromResult: ...

    async def close(self) -> None: ...


def bounded_step(start: float, end: float, step: float, max_points: int) -> float:
    """Widen the step so a range query returns at most max_points points per series."""
    span = max(end - start, 0.0)
    return max(step, math.ceil(span / max(max_points - 1, 1)) if span else step, 1.0)


def _parse_result(data: Any, max_series: int, max_points: int) -> PromResult:
    if not isinstance(data, dict) or data.get("status") != "success":
        raise PrometheusUnavailable("unexpected response shape from Prometheus")
    body = data.get("data") or {}
    rtype = str(body.get("resultType", ""))
    raw = body.get("result")
    if rtype in {"scalar", "string"}:
        scalar = _float(raw[1]) if rtype == "scalar" and isinstance(raw, list) and len(raw) == 2 else None
        return PromResult(rtype, scalar=scalar)
    if not isinstance(raw, list):
        raise PrometheusUnavailable("unexpected result shape from Prometheus")
    result = PromResult(rtype, dropped_series=max(len(raw) - max_series, 0))
    for item in raw[:max_series]:
        labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
        if "value" in item:
            values = [(float(item["value"][0]), _float(item["value"][1]))]
        else:
            pairs = item.get("values") or []
            if len(pairs) > max_points:
                result.dropped_points += len(pairs) - max_points
                pairs = pairs[-max_points:]
            values = [(float(t), _float(v)) for t, v in pairs]
        result.series.append(Series(labels, values))
    return result


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


class PrometheusAPI:
    """Instant and range queries over HTTP, bounded in time, series, points and bytes."""

    def __init__(
        self,
        base_url: str,
        allowlist: URLAllowlist,
        *,
        timeout_seconds: float = 10.0,
        max_series: int = 50,
        max_points: int = 500,
        auth: BasicAuthConfig | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Basic auth when Prometheus sits behind a web config (prometheus_basic_auth).
        self.auth = auth
        self.allowlist = allowlist
        self.timeout_seconds = timeout_seconds
        self.max_series = max_series
        self.max_points = max_points
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    async def _get(self, path: str, params: dict[str, str]) -> PromResult:
        url = self.allowlist.check(f"{self.base_url}{path}")
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # A session belongs to one event loop; a caller on another loop (a worker thread) gets its own.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_seconds))
            self._session_loop = loop
        try:
            headers = self.auth.headers() if self.auth else None
            async with self._session.get(url, params=params, allow_redirects=False, headers=headers) as resp:
                body = await read_capped(resp.content, MAX_BODY_BYTES)
                if len(body) > MAX_BODY_BYTES:
                    raise PrometheusQueryError("result larger than 8 MiB: narrow the query")
                if resp.status in (401, 403):
                    hint = "wrong prometheus_basic_auth" if self.auth else "set prometheus_basic_auth in agent.yml"
                    raise PrometheusUnavailable(f"Prometheus answered HTTP {resp.status} ({hint})")
                if resp.status >= 500 or resp.status in (401, 403, 404, 429):
                    raise PrometheusUnavailable(f"Prometheus answered HTTP {resp.status}")
                try:
                    data = await asyncio.to_thread(_json, body)
                except ValueError:
                    raise PrometheusUnavailable(f"Prometheus answered HTTP {resp.status} with non-JSON") from None
                if resp.status >= 400:
                    raise PrometheusQueryError(str(data.get("error", f"HTTP {resp.status}"))[:500])
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PrometheusUnavailable(f"Prometheus unreachable: {type(exc).__name__}: {exc}"[:300]) from None
        return _parse_result(data, self.max_series, self.max_points)

    async def instant(self, query: str, at: float | None = None) -> PromResult:
        params = {"query": check_query(query), "timeout": f"{self.timeout_seconds:g}s"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return await self._get("/api/v1/query", params)

    async def range(self, query: str, start: float, end: float, step: float) -> PromResult:
        if end <= start:
            raise GuardrailError("range query: end must be after start")
        step = bounded_step(start, end, step, self.max_points)
        params = {
            "query": check_query(query),
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:g}",
            "timeout": f"{self.timeout_seconds:g}s",
        }
        return await self._get("/api/v1/query_range", params)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None


def _json(body: bytes) -> Any:
    import json

    return json.loads(body)


class UnavailableSource:
    """What the tools use when no prometheus_url is configured."""

    async def instant(self, query: str, at: float | None = None) -> PromResult:
        raise PrometheusUnavailable("no prometheus_url configured")

    async def range(self, query: str, start: float, end: float, step: float) -> PromResult:
        raise PrometheusUnavailable("no prometheus_url configured")

    async def close(self) -> None:
        return None


# --- recorded evidence ---------------------------------------------------------------------

_SELECTOR = re.compile(
    r"^\s*(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(?P<matchers>[^{}]*)\})?\s*(?:\[(?P<range>\d+[smhd])\])?\s*$"
)
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_series_line(text: str) -> dict[str, str]:
    """`name{a="b",...}` (the promtool test series notation) to a label dict."""
    match = _SELECTOR.match(text)
    if not match or not match.group("name") or match.group("range"):
        raise ValueError(f"not a series: {text!r}")
    labels = {"__name__": match.group("name")}
    for label, op, value in _matchers(match.group("matchers") or ""):
        if op != "=":
            raise ValueError(f"series {text!r}: only = allowed")
        labels[label] = value
    return labels


def _matchers(text: str) -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _MATCHER.match(text, pos)
        if not m:
            raise PrometheusQueryError(f"recorded evidence cannot parse matchers {text!r}")
        found.append((m.group(1), m.group(2), bytes(m.group(3), "utf-8").decode("unicode_escape")))
        pos = m.end()
    return found


def _matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        actual = labels.get(label, "")
        if op == "=" and actual != value:
            return False
        if op == "!=" and actual == value:
            return False
        if op == "=~" and not re.fullmatch(value, actual):
            return False
        if op == "!~" and re.fullmatch(value, actual):
            return False
    return True


class RecordedPrometheus:
    """Answers selectors (`name{...}`, `{__name__=~"..."}`, `name{...}[30m]`) from recorded series.

    Each series holds its samples oldest first, one per `interval` seconds, ending now. Anything
    beyond a selector raises PrometheusQueryError: a replay must not pretend to evaluate PromQL.
    """

    def __init__(self, series: list[tuple[dict[str, str], list[float]]], interval: float = 15.0) -> None:
        self.series = series
        self.interval = interval
        self.queries: list[str] = []

    def _select(self, query: str) -> tuple[list[tuple[dict[str, str], list[float]]], str | None]:
        self.queries.append(query)
        m = _SELECTOR.match(check_query(query))
        if not m or not (m.group("name") or m.group("matchers")):
            raise PrometheusQueryError(f"recorded evidence answers plain selectors only, not {query!r}")
        matchers = _matchers(m.group("matchers") or "")
        if m.group("name"):
            matchers.append(("__name__", "=", m.group("name")))
        return [(lbl, vals) for lbl, vals in self.series if _matches(lbl, matchers)], m.group("range")

    def _points(self, values: list[float], now: float) -> list[tuple[float, float]]:
        return [(now - (len(values) - 1 - i) * self.interval, v) for i, v in enumerate(values)]

    async def instant(self, query: str, at: float | None = None) -> PromResult:
        now = at or time.time()
        selected, range_ = self._select(query)
        if range_:
            # Spread the recorded samples over the requested window, the oldest at its start.
            span = int(range_[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[range_[-1]]
            return PromResult("matrix", [Series(dict(lbl), _spread(vals, now - span, now)) for lbl, vals in selected])
        return PromResult("vector", [Series(dict(lbl), [(now, vals[-1])]) for lbl, vals in selected if vals])

    async def range(self, query: str, start: float, end: float, step: float) -> PromResult:
        selected, range_ = self._select(query)
        if range_:
            raise PrometheusQueryError("range query of a range vector")
        return PromResult("matrix", [Series(dict(lbl), self._points(vals, end)) for lbl, vals in selected])

    async def close(self) -> None:
        return None


def _spread(values: list[float], start: float, end: float) -> list[tuple[float, float]]:
    if len(values) == 1:
        return [(start, values[0])]
    step = (end - start) / (len(values) - 1)
    return [(start + i * step, v) for i, v in enumerate(values)]
