"""`gpu-watchdog ask QUESTION`: the investigation loop, ad hoc, from a terminal or a script."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from typing import Any

import click

from agent_webhook.investigation.config import InvestigationConfig, load_config_file, with_overrides
from agent_webhook.investigation.investigator import Investigation
from agent_webhook.model import Diagnosis
from exporters.common.cli import fail
from exporters.common.logs import redact


def render_markdown(dx: Diagnosis) -> str:
    lines = [f"# {dx.summary}", "", dx.diagnosis_markdown, ""]
    source = f"LLM ({dx.llm_model})" if dx.llm_used else "deterministic triage"
    lines.append(f"_Answered by {source}; {len(dx.evidence)} tool calls; rule `{dx.triage_rule or '-'}`._")
    if dx.degraded:
        lines += ["", "**Degraded:**", *[f"- {d}" for d in dx.degraded]]
    return "\n".join(lines) + "\n"


def _progress(name: str, args: dict[str, Any], ok: bool, duration: float) -> None:
    shown = " ".join(f"{k}={redact(str(v))[:60]}" for k, v in args.items())
    mark = "ok" if ok else "failed"
    click.echo(f"  -> {name} {shown} [{mark}, {duration:.2f}s]", err=True)


@click.command("ask", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("question")
@click.option("--json", "as_json", is_flag=True, help="Print the diagnosis as JSON.")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), envvar="GPU_WATCHDOG_CONFIG", help="agent.yml"
)
@click.option("--prometheus-url", envvar="GPU_WATCHDOG_PROMETHEUS_URL", help="Prometheus base URL.")
@click.option("--alertmanager-url", envvar="GPU_WATCHDOG_ALERTMANAGER_URL", help="Alertmanager base URL.")
@click.option("--llm-base-url", envvar="GPU_WATCHDOG_LLM_BASE_URL", help="OpenAI-compatible (vLLM) /v1 URL.")
@click.option("--llm-model", envvar="GPU_WATCHDOG_LLM_MODEL", help="Model name the server serves.")
@click.option(
    "--slurm-mode", type=click.Choice(["metrics", "scontrol"]), envvar="GPU_WATCHDOG_SLURM_MODE", default=None
)
def ask(
    *,
    question: str,
    as_json: bool,
    config_path: str | None,
    prometheus_url: str | None,
    alertmanager_url: str | None,
    llm_base_url: str | None,
    llm_model: str | None,
    slurm_mode: str | None,
) -> None:
    """Answer a question about the cluster with evidence and a diagnosis.

    Example: gpu-watchdog ask "why is node gpu-2 drained?" (read-only: nothing is changed).
    """
    if not question.strip():
        fail("the question is empty")
    try:
        raw = with_overrides(
            load_config_file(config_path),
            prometheus_url=prometheus_url,
            alertmanager_url=alertmanager_url,
            llm_base_url=llm_base_url,
            llm_model=llm_model,
            slurm_mode=slurm_mode,
        )
        cfg = InvestigationConfig.from_mapping(raw)
    except ValueError as exc:
        fail(str(exc))
    interactive = sys.stderr.isatty()
    if interactive:
        click.echo("investigating (read-only tools)...", err=True)
    dx = asyncio.run(_ask(cfg, question, _progress if interactive else None))
    if as_json:
        click.echo(json.dumps({"question": question, **dataclasses.asdict(dx)}, indent=2, default=str))
    else:
        click.echo(render_markdown(dx), nl=False)


async def _ask(cfg: InvestigationConfig, question: str, on_event: Any) -> Diagnosis:
    investigation = Investigation(cfg, on_event=on_event)
    try:
        return await investigation.ask(question)
    finally:
        await investigation.close()
