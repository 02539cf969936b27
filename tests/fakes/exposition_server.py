"""Serves Prometheus exposition text we control, for a real Prometheus to scrape.

Series are given as (labels incl. __name__, values): the server serves `values[phase]`
(the last value once the phase runs past the list), so a test can move counters forward
(`set_phase(1)`) and let Prometheus record an increase, exactly as an exporter would.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from aiohttp import web

from tests.fakes.threaded_server import ThreadedServer


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class ExpositionServer(ThreadedServer):
    def __init__(self, series: Sequence[tuple[dict[str, str], Sequence[float]]] = ()) -> None:
        self._lock = threading.Lock()
        self.series: list[tuple[dict[str, str], list[float]]] = [(dict(lbl), list(v)) for lbl, v in series]
        self.phase = 0
        self.scrapes = 0
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        super().__init__(app)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_phase(self, phase: int) -> None:
        with self._lock:
            self.phase = phase

    def add(self, series: Sequence[tuple[dict[str, str], Sequence[float]]]) -> None:
        with self._lock:
            self.series.extend((dict(lbl), list(v)) for lbl, v in series)

    def render(self) -> str:
        with self._lock:
            families: dict[str, list[str]] = {}
            for labels, values in self.series:
                if not values:
                    continue
                name = labels["__name__"]
                value = values[min(self.phase, len(values) - 1)]
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()) if k != "__name__")
                families.setdefault(name, []).append(f"{name}{{{pairs}}} {value:g}")
        lines: list[str] = []
        for name, samples in sorted(families.items()):
            kind = "counter" if name.endswith("_total") else "gauge"
            lines.append(f"# HELP {name} test series")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(text=self.render(), content_type="text/plain", charset="utf-8")
