"""Cost of one investigation: deterministic triage against a real Prometheus, and the LLM loop's
own overhead against a zero-latency scripted model (so the figure is ours, not the model's).

    .venv/bin/python bench/investigation_latency.py [--rounds 10]

Prints p50/p99 wall time per investigation and the tool calls per investigation. Issue #6
names no figure for this (its floors are for ingest); these size the worker pool
(investigations per second per worker) and show what the LLM loop adds besides the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_webhook.investigation import Investigation, InvestigationConfig
from tests.evals.evalset import load_incidents
from tests.fakes.exposition_server import ExpositionServer
from tests.fakes.openai_server import FakeOpenAIServer, text, tool_calls
from tests.harness.processes import ProcessManager
from tests.harness.promstack import start_prometheus


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(cfg: InvestigationConfig, rounds: int) -> tuple[list[float], float]:
    incidents = [i for i in load_incidents() if i.real_prometheus]
    investigation = Investigation(cfg)
    times: list[float] = []
    tools = 0
    for _ in range(rounds):
        for incident in incidents:
            started = time.perf_counter()
            dx = await investigation.investigate(incident.alert)
            times.append(time.perf_counter() - started)
            tools += len(dx.evidence)
            assert not dx.degraded, dx.degraded
    return times, tools / len(times)


def report(name: str, times: list[float], tools: float) -> None:
    print(
        f"{name:44} n={len(times):4}  p50={statistics.median(times) * 1000:7.1f} ms  "
        f"p99={percentile(times, 0.99) * 1000:7.1f} ms  tool calls/investigation={tools:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    incidents = [i for i in load_incidents() if i.real_prometheus]
    with tempfile.TemporaryDirectory() as tmp:
        procs = ProcessManager(Path(tmp) / "logs")
        exporter = ExpositionServer([s for i in incidents for s in i.series]).start()
        answer = {"severity": "critical", "summary": "s", "likely_cause": "c", "recommended_actions": ["a"]}
        llm = FakeOpenAIServer([])
        # Two model turns per investigation: one tool call, then the answer.
        llm.script = lambda body, index: (
            tool_calls(("slurm_cluster", {})) if len(body["messages"]) == 2 else text(json.dumps(answer))
        )
        llm.start()
        try:
            prom = start_prometheus(procs, Path(tmp), scrape_targets={"exporters": [exporter.target]})
            prom.wait_for('nvidia_gpu_up{node="gpu-e01"}')
            exporter.set_phase(1)
            prom.wait_for('nvidia_gpu_up{node="gpu-e01",gpu="3"} == 0')
            base = {"prometheus_url": prom.url}
            print(f"{len(incidents)} eval incidents x {args.rounds} rounds, real Prometheus on loopback")
            times, tools = asyncio.run(measure(InvestigationConfig.from_mapping(base), args.rounds))
            report("deterministic triage (evidence + rules)", times, tools)
            llm_cfg = {**base, "llm": {"base_url": llm.url, "model": "fake-model"}}
            times, tools = asyncio.run(measure(InvestigationConfig.from_mapping(llm_cfg), args.rounds))
            report("LLM loop, zero-latency model (2 turns)", times, tools)
        finally:
            llm.stop()
            exporter.stop()
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
