"""A collected set of metric families, rendered once and served to every scrape.

Rendering 64 GPUs' worth of samples in pure Python costs milliseconds; doing it once per
collection cycle instead of once per scrape keeps scrape latency flat no matter how many
Prometheus servers scrape. Only a few cheap, time-dependent series (snapshot age) are
rendered per request.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.utils import floatToGoString

# The classic 0.0.4 text format: what every Prometheus version (Debian 12 ships 2.42) expects.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = om_exposition.CONTENT_TYPE_LATEST
_OM_EOF = b"# EOF\n"
# Level 6 takes ~4x the time of 1 for ~10 % less: this is paid once per cycle, not per scrape.
GZIP_LEVEL = 6


class _Families:
    """Adapter: prometheus_client's generators want an object with collect()."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


# Escaped names and rendered label sets, kept across cycles: the same GPUs' label sets come back
# every cycle, so most samples cost one dict lookup for their labels. Bounded, so label values
# that keep changing (a process id, a job id) cannot grow it without end.
_CACHE_MAX = 200_000
_metric_names: dict[str, str] = {}
_om_sample_names: dict[str, str] = {}
_labels: dict[tuple[tuple[str, str], ...], str] = {}


def _metric_name(name: str) -> str:
    escaped = _metric_names.get(name)
    if escaped is None:
        if len(_metric_names) > _CACHE_MAX:
            _metric_names.clear()
        escaped = _metric_names[name] = om_exposition.escape_metric_name(name, om_exposition.UNDERSCORES)
    return escaped


def _om_sample_name(name: str) -> str:
    escaped = _om_sample_names.get(name)
    if escaped is None:
        if len(_om_sample_names) > _CACHE_MAX:
            _om_sample_names.clear()
        # What prometheus_client's OpenMetrics writer does to a sample name (label-name runes).
        escaped = _om_sample_names[name] = om_exposition._escape(
            name, om_exposition.UNDERSCORES, om_exposition._is_legacy_labelname_rune
        )
    return escaped


def _escape_value(value: str) -> str:
    """Backslash, newline and double quote escaped, as prometheus_client does label values."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _label_pairs(labels: dict[str, str]) -> str:
    """`k="v",...` sorted by name, as prometheus_client writes them (both formats)."""
    return ",".join(
        f'{om_exposition.escape_label_name(name, om_exposition.UNDERSCORES)}="{_escape_value(labels[name])}"'
        for name in sorted(labels)
    )


def _labelstr(labels: dict[str, str]) -> str:
    """`{...}` for a sample's labels, the same in both formats; "" for none."""
    key = tuple(labels.items())
    rendered = _labels.get(key)
    if rendered is None:
        if len(_labels) > _CACHE_MAX:
            _labels.clear()
        rendered = _labels[key] = "{" + _label_pairs(labels) + "}" if labels else ""
    return rendered


def _go_float(value: float) -> str:
    """floatToGoString, without its four comparisons for the common case of a plain number."""
    number = float(value)
    text = repr(number)
    # 'inf', '-inf', 'nan' end in f or n; a number with over six digits before the point is
    # written with an exponent, Go style: both left to prometheus_client.
    if text[-1] in "fn" or (number > 0 and text.find(".") > 6):
        return floatToGoString(number)
    return text


def _escape_help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


# OpenMetrics-only types as the 0.0.4 writer folds them (counter and info are renamed too, below).
_TEXT_TYPES = {"stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


def render_text(families: Iterable[Metric]) -> bytes:
    """Exactly prometheus_client's exposition.generate_latest (the 0.0.4 text format, default
    underscore escaping), byte for byte (tests/common/test_snapshot_render.py), in about half the
    time: it runs in the collection thread holding the GIL while scrapes wait."""
    out: list[str] = []
    append = out.append
    for metric in families:
        mname = metric.name
        mtype = metric.type
        if mtype == "counter":
            mname += "_total"
        elif mtype == "info":
            mname += "_info"
            mtype = "gauge"
        else:
            mtype = _TEXT_TYPES.get(mtype, mtype)
        escaped = _metric_name(mname)
        doc = _escape_help(metric.documentation)
        append(f"# HELP {escaped} {doc}\n# TYPE {escaped} {mtype}\n")
        # Samples that are OpenMetrics-only go into gauges after the family, as prometheus_client does.
        om_names = (metric.name + "_created", metric.name + "_gsum", metric.name + "_gcount")
        om_samples: dict[str, list[str]] = {}
        for s in metric.samples:
            line = f"{_metric_name(s.name)}{_labelstr(s.labels)} {_go_float(s.value)}" + (
                f" {int(float(s.timestamp) * 1000):d}\n" if s.timestamp is not None else "\n"
            )
            if s.name in om_names:
                om_samples.setdefault(s.name[len(metric.name) :], []).append(line)
            else:
                append(line)
        for suffix, lines in sorted(om_samples.items()):
            escaped = _metric_name(metric.name + suffix)
            append(f"# HELP {escaped} {doc}\n# TYPE {escaped} gauge\n")
            out.extend(lines)
    return "".join(out).encode("utf-8")


def render_openmetrics(families: Iterable[Metric]) -> bytes:
    """Exactly prometheus_client's openmetrics generate_latest, byte for byte; a family with
    exemplars or native histograms (none of ours) is left to prometheus_client."""
    out: list[str] = []
    append = out.append
    for metric in families:
        if any(s.exemplar or s.native_histogram for s in metric.samples):
            body = om_exposition.generate_latest(_Families([metric]))
            append(body[: -len(_OM_EOF)].decode("utf-8"))
            continue
        escaped = _metric_name(metric.name)
        # OpenMetrics escapes double quotes in HELP too; the 0.0.4 writer does not.
        append(f"# HELP {escaped} {_escape_value(metric.documentation)}\n# TYPE {escaped} {metric.type}\n")
        if metric.unit:
            append(f"# UNIT {escaped} {metric.unit}\n")
        for s in metric.samples:
            value = _go_float(s.value) if s.value is not None else ""
            stamp = f" {s.timestamp}" if s.timestamp is not None else ""
            append(f"{_om_sample_name(s.name)}{_labelstr(s.labels)} {value}{stamp}\n")
    append("# EOF\n")
    return "".join(out).encode("utf-8")


def wants_openmetrics(accept: str | None) -> bool:
    """Content negotiation as prometheus_client does it: OpenMetrics only when asked for."""
    if not accept:
        return False
    return any(part.split(";")[0].strip() == "application/openmetrics-text" for part in accept.split(","))


@dataclass(frozen=True)
class Packed:
    """One exposition body, plus its gzip stream compressed once up to a sync flush.

    A scrape that accepts gzip gets ``gzip_prefix`` (gzip header and the body's deflate blocks,
    ending byte-aligned and not final), the per-request tail deflated on its own as the final
    block, and the trailer: the tail's CRC is combined with the body's (``crc``), so no
    compressor state has to survive the cycle. That keeps it to plain bytes and ints, which is
    what lets a collection process hand it to the serving process (childproc.py).
    """

    body: bytes
    gzip_prefix: bytes
    crc: int

    @classmethod
    def of(cls, body: bytes) -> Packed:
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip wrapper
        return cls(body, compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH), zlib.crc32(body))

    def gzip_with(self, tail: bytes) -> bytes:
        """One gzip member (a reader that stops after the first, like curl's, gets it all)."""
        raw = zlib.compressobj(1, zlib.DEFLATED, -15)  # raw deflate: no header, BFINAL on flush
        size = (len(self.body) + len(tail)) & 0xFFFFFFFF
        trailer = struct.pack("<II", zlib.crc32(tail, self.crc), size)
        return b"".join((self.gzip_prefix, raw.compress(tail), raw.flush(), trailer))


@dataclass
class Snapshot:
    families: Sequence[Metric]
    collected_at: float  # unix time the cycle finished
    _text: Packed | None = field(default=None, repr=False)
    _openmetrics: Packed | None = field(default=None, repr=False)  # without the final "# EOF"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def prerendered(cls, collected_at: float, text: Packed, openmetrics: Packed) -> Snapshot:
        """A snapshot rendered elsewhere (the collection process): bytes only, no families."""
        return cls(families=(), collected_at=collected_at, _text=text, _openmetrics=openmetrics)

    def packed_text(self) -> Packed:
        if self._text is None:
            with self._lock:
                if self._text is None:
                    # Compressed here too, once per cycle in the collection thread (text() is
                    # called there): a gzip scrape only finishes the stream (Packed.gzip_with).
                    self._text = Packed.of(render_text(self.families))
        return self._text

    def packed_openmetrics(self) -> Packed:
        if self._openmetrics is None:
            with self._lock:
                if self._openmetrics is None:
                    body = render_openmetrics(self.families)
                    self._openmetrics = Packed.of(body[: -len(_OM_EOF)] if body.endswith(_OM_EOF) else body)
        return self._openmetrics

    def text(self) -> bytes:
        return self.packed_text().body

    def openmetrics(self) -> bytes:
        return self.packed_openmetrics().body

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


def wants_gzip(accept_encoding: str | None) -> bool:
    """Whether the client takes gzip (Prometheus sends `Accept-Encoding: gzip`); q=0 refuses it."""
    for part in (accept_encoding or "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*"):
            weight = params.strip()
            if not weight.startswith("q="):
                return True
            try:
                return float(weight[2:]) > 0
            except ValueError:
                return True
    return False


def render_scrape_gzip(snapshot: Snapshot, dynamic: DynamicFamilies | None = None, openmetrics: bool = False) -> bytes:
    """A gzip body for one scrape: the snapshot as compressed once per cycle, the per-request
    tail compressed onto it, as one gzip member any client reads."""
    extra = list(dynamic(snapshot)) if dynamic else []
    if openmetrics:
        return snapshot.packed_openmetrics().gzip_with(render_openmetrics(extra) if extra else _OM_EOF)
    return snapshot.packed_text().gzip_with(render_text(extra) if extra else b"")
