"""Score the LLM path (and the deterministic triage beside it) on the eval set.

    GPU_WATCHDOG_EVAL_LLM_URL=http://127.0.0.1:8000/v1 .venv/bin/python -m tests.evals.score [--model NAME]

Evidence is replayed from the incident files, so no Prometheus is needed; the model's own
free-form PromQL beyond plain selectors gets a "query error" it has to work around.

The model is scored on its own answer (`Diagnosis.llm_answer`: severity, summary, cause,
markdown, actions), never on the triage text the finding carries beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field

import openai

from agent_webhook.investigation import Investigation, InvestigationConfig
from tests.evals.evalset import Incident, check, check_llm, load_incidents


@dataclass
class Report:
    model: str
    rows: list[tuple[str, bool, bool, float, str]] = field(default_factory=list)  # id, triage, llm, s, why

    @property
    def total(self) -> int:
        return len(self.rows)

    @property
    def llm_score(self) -> int:
        return sum(r[2] for r in self.rows)

    @property
    def triage_score(self) -> int:
        return sum(r[1] for r in self.rows)

    def table(self) -> str:
        lines = [f"{'incident':38} {'triage':7} {'llm':5} {'seconds':>7}  notes"]
        for ident, triage_ok, llm_ok, seconds, why in self.rows:
            lines.append(
                f"{ident:38} {'ok' if triage_ok else 'FAIL':7} {'ok' if llm_ok else 'FAIL':5} {seconds:7.1f}  {why}"
            )
        triage_score = sum(r[1] for r in self.rows)
        llm_score = sum(r[2] for r in self.rows)
        lines.append(f"triage: {triage_score}/{self.total}")
        lines.append(f"LLM ({self.model}): {llm_score}/{self.total} ({100 * llm_score / max(self.total, 1):.0f}%)")
        return "\n".join(lines)


async def llm_reachable(url: str, model: str | None) -> str | None:
    """The model to use (the named one, else the first the server lists), or None if unreachable."""
    client = openai.AsyncOpenAI(
        base_url=url, api_key=os.environ.get("GPU_WATCHDOG_EVAL_LLM_KEY", "EMPTY"), max_retries=0, timeout=5
    )
    try:
        models = await client.models.list()
    except openai.APIError:
        return None
    finally:
        await client.close()
    ids = [m.id for m in models.data]
    if model:
        return model if model in ids or not ids else None
    return ids[0] if ids else None


async def score_llm(url: str, model: str, incidents: list[Incident]) -> Report:
    report = Report(model)
    triage_cfg = InvestigationConfig.from_mapping({})
    llm_cfg = InvestigationConfig.from_mapping(
        {"llm": {"base_url": url, "model": model, "api_key_env": "GPU_WATCHDOG_EVAL_LLM_KEY", "budget_seconds": 300}}
    )
    for incident in incidents:
        history = incident.history_lookup()
        triage = Investigation(triage_cfg, source=incident.recorded_source(), history=history)
        triage_dx = await triage.investigate(incident.alert)
        started = time.monotonic()
        llm = Investigation(llm_cfg, source=incident.recorded_source(), history=history)
        llm_dx = await llm.investigate(incident.alert)
        seconds = time.monotonic() - started
        problems = check_llm(incident, llm_dx)  # the model's own answer only, never the triage's
        report.rows.append(
            (incident.id, not check(incident, triage_dx), not problems, seconds, "; ".join(problems)[:120])
        )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("GPU_WATCHDOG_EVAL_LLM_URL"))
    parser.add_argument("--model", default=os.environ.get("GPU_WATCHDOG_EVAL_LLM_MODEL"))
    args = parser.parse_args()
    if not args.url:
        print("set GPU_WATCHDOG_EVAL_LLM_URL (or --url) to an OpenAI-compatible /v1 URL", file=sys.stderr)
        return 2
    model = asyncio.run(llm_reachable(args.url, args.model))
    if model is None:
        print(f"no model reachable at {args.url}", file=sys.stderr)
        return 1
    print(asyncio.run(score_llm(args.url, model, load_incidents())).table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
