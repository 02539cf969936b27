"""Read Prometheus text exposition in tests (with prometheus_client's own parser)."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.harness.processes import http_get


def scrape(url: str, timeout: float = 5.0) -> tuple[dict[tuple[str, frozenset[tuple[str, str]]], float], float]:
    """({(sample name, labels): value}, seconds the scrape took)."""
    started = time.perf_counter()
    status, body = http_get(f"{url}/metrics", timeout=timeout)
    elapsed = time.perf_counter() - started
    assert status == 200, body[:300]
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, elapsed


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    """The value of the one sample with this name whose labels include `labels`."""
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return matches[0] if matches else None


def series(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]
