"""Fixtures: a real Prometheus scraping exposition text we control (session-wide), fakes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent_webhook.investigation.config import InvestigationConfig
from tests.evals.evalset import Incident, load_incidents
from tests.fakes.exposition_server import ExpositionServer
from tests.harness.processes import ProcessManager
from tests.harness.promstack import MissingBinary, PrometheusServer, start_prometheus

# Extra series for the tool tests: many series (result caps) and a long label value (output caps).
EXTRA_SERIES = [({"__name__": "test_many_series", "i": str(i)}, [float(i)]) for i in range(120)]
EXTRA_SERIES.append(({"__name__": "test_long_label", "text": "x" * 3000}, [1.0]))
EXTRA_SERIES.append(({"__name__": "test_secret_info", "dsn": "postgres://admin:hunter2@db:5432/x"}, [1.0]))
# Secrets in label values (test_secret_corpus.py): what a careless exporter or job label exposes.
EXTRA_SERIES.append(
    (
        {
            "__name__": "test_secret_corpus",
            "hf": "hf_kLm3NoPqRsTuVwXyZaBcDeFgHiJkLmNo12",
            "slack": "xoxp-2143425-98765432101-AbCdEfGhIjKlMnOpQrStUv",
            "cmd": "python serve.py --password pwLEAK4value --model x",
            "key": "-----BEGIN PRIVATE KEY----- MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjLEAKPEMBODY "
            "-----END PRIVATE KEY-----",
        },
        [1.0],
    )
)


@dataclass
class LiveCluster:
    prometheus: PrometheusServer
    exporter: ExpositionServer
    incidents: list[Incident]

    def config(self, **overrides: object) -> InvestigationConfig:
        raw: dict[str, object] = {"prometheus_url": self.prometheus.url}
        raw.update(overrides)
        return InvestigationConfig.from_mapping(raw)


@pytest.fixture(scope="session")
def live_cluster(session_procs: ProcessManager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    """Every eval incident that can share one Prometheus (distinct nodes), scraped for real.

    Phase 0 serves each series' first value, phase 1 its last: Prometheus records the counter
    increases (XIDs, ECC) the way it would from a real exporter.
    """
    incidents = [i for i in load_incidents() if i.real_prometheus]
    exporter = ExpositionServer([s for i in incidents for s in i.series] + EXTRA_SERIES).start()
    try:
        try:
            prom = start_prometheus(
                session_procs, tmp_path_factory.mktemp("live-prom"), scrape_targets={"exporters": [exporter.target]}
            )
        except MissingBinary as exc:
            pytest.fail(str(exc), pytrace=False)
        prom.wait_for('nvidia_gpu_up{node="gpu-e01",gpu="3"} == 1', timeout=30)
        exporter.set_phase(1)
        prom.wait_for('nvidia_gpu_up{node="gpu-e01",gpu="3"} == 0', timeout=30)
        yield LiveCluster(prom, exporter, incidents)
    finally:
        exporter.stop()
