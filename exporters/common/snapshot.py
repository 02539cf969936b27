"""A collected set of metric families, rendered once and served to every scrape.

Rendering 64 GPUs' worth of samples in pure Python costs milliseconds; doing it once per
collection cycle instead of once per scrape keeps scrape latency flat no matter how many
Prometheus servers scrape. Only a few cheap, time-dependent series (snapshot age) are
rendered per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_exposition

# The classic 0.0.4 text format: what every Prometheus version (Debian 12 ships 2.42) expects.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = om_exposition.CONTENT_TYPE_LATEST
_OM_EOF = b"# EOF\n"


class _Families:
    """Adapter: prometheus_client's generators want an object with collect()."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def render_text(families: Iterable[Metric]) -> bytes:
    return exposition.generate_latest(_Families(families))


def render_openmetrics(families: Iterable[Metric]) -> bytes:
    return om_exposition.generate_latest(_Families(families))


def wants_openmetrics(accept: str | None) -> bool:
    """Content negotiation as prometheus_client does it: OpenMetrics only when asked for."""
    if not accept:
        return False
    return any(part.split(";")[0].strip() == "application/openmetrics-text" for part in accept.split(","))


@dataclass
class Snapshot:
    families: Sequence[Metric]
    collected_at: float  # unix time the cycle finished
    _text: bytes | None = field(default=None, repr=False)
    _openmetrics: bytes | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def text(self) -> bytes:
        if self._text is None:
            with self._lock:
                if self._text is None:
                    self._text = render_text(self.families)
        return self._text

    def openmetrics(self) -> bytes:
        if self._openmetrics is None:
            with self._lock:
                if self._openmetrics is None:
                    body = render_openmetrics(self.families)
                    self._openmetrics = body[: -len(_OM_EOF)] if body.endswith(_OM_EOF) else body
        return self._openmetrics

    def age_seconds(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.collected_at)

    def find(self, name: str) -> Metric | None:
        """The family with this name (counter families are named without `_total`)."""
        for family in self.families:
            if family.name == name:
                return family
        return None


EMPTY_SNAPSHOT = Snapshot(families=(), collected_at=0.0)

DynamicFamilies = Callable[[Snapshot], Iterable[Metric]]


def render_scrape(snapshot: Snapshot, openmetrics: bool, dynamic: DynamicFamilies | None = None) -> tuple[bytes, str]:
    """Body and content type for one scrape: the cached snapshot plus the per-request tail."""
    extra = list(dynamic(snapshot)) if dynamic else []
    if openmetrics:
        tail = render_openmetrics(extra) if extra else _OM_EOF
        return snapshot.openmetrics() + tail, OPENMETRICS_CONTENT_TYPE
    return snapshot.text() + (render_text(extra) if extra else b""), TEXT_CONTENT_TYPE
