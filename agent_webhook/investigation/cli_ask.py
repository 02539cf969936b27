"""`gpu-watchdog ask QUESTION`: the investigation loop, ad hoc, from a terminal or a script."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click

from agent_webhook.cli_findings import ENV, FindingsClient, config_option, default_server
from agent_webhook.config import ConfigError, build_config, load_file, load_investigation
from agent_webhook.investigation.config import InvestigationConfig
from agent_webhook.investigation.investigator import (
    EVIDENCE_CALLS,
    LLM_GRACE_SECONDS,
    FindingsLookup,
    Investigation,
    time_needed,
)
from agent_webhook.model import Diagnosis
from agent_webhook.terminal import terminal_safe
from gpu_watchdog_core.cli import fail
from gpu_watchdog_core.logs import redact


def render_markdown(dx: Diagnosis) -> str:
    lines = [f"# {dx.summary}", "", dx.diagnosis_markdown, ""]
    source = f"LLM ({dx.llm_model})" if dx.llm_used else "deterministic triage"
    lines.append(f"_Answered by {source}; {len(dx.evidence)} tool calls; rule `{dx.triage_rule or '-'}`._")
    if dx.degraded:
        lines += ["", "**Degraded:**", *[f"- {d}" for d in dx.degraded]]
    return terminal_safe(redact("\n".join(lines))) + "\n"


def _progress(name: str, args: dict[str, Any], ok: bool, duration: float) -> None:
    shown = terminal_safe(" ".join(f"{k}={redact(str(v))[:60]}" for k, v in args.items()), newlines=False)
    mark = "ok" if ok else "failed"
    click.echo(f"  -> {terminal_safe(name, newlines=False)} {shown} [{mark}, {duration:.2f}s]", err=True)


@click.command("ask", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("question")
@click.option("--json", "as_json", is_flag=True, help="Print the diagnosis as JSON.")
@config_option()
@click.option("--prometheus-url", envvar=f"{ENV}_PROMETHEUS_URL", help="Prometheus base URL.")
@click.option("--alertmanager-url", envvar=f"{ENV}_ALERTMANAGER_URL", help="Alertmanager base URL.")
@click.option("--llm-base-url", envvar=f"{ENV}_LLM_BASE_URL", help="OpenAI-compatible (vLLM) /v1 URL.")
@click.option("--llm-model", envvar=f"{ENV}_LLM_MODEL", help="Model name the server serves.")
@click.option("--slurm-mode", type=click.Choice(["metrics", "scontrol"]), envvar=f"{ENV}_SLURM_MODE", default=None)
@click.option(
    "--timeout",
    "timeout",
    type=click.FloatRange(min=1, max=3600),
    envvar=f"{ENV}_ASK_TIMEOUT",
    default=None,
    help="Overall limit in seconds (default: the evidence tools' worst case plus llm.budget_seconds). The "
    "LLM's budget is shortened to fit; past the limit, ask exits 3.",
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
    timeout: float | None,
) -> None:
    """Answer a question about the cluster with evidence and a diagnosis.

    Example: gpu-watchdog ask "why is node gpu-2 drained?" (read-only: nothing is changed). A GPU
    named without its node ("what is wrong with gpu 3?") is looked up: the only node with that
    GPU, or those with alerts or errors for it. Alerts firing in Alertmanager and, with agent.yml,
    the agent's findings for the node are part of the answer.
    """
    if not question.strip():
        fail("the question is empty")
    path = Path(config_path) if config_path else None
    overrides = {
        "prometheus_url": prometheus_url,
        "alertmanager_url": alertmanager_url,
        "llm_base_url": llm_base_url,
        "llm_model": llm_model,
        "slurm_mode": slurm_mode,
    }
    try:
        cfg = InvestigationConfig.from_mapping(load_investigation(path, overrides))
    except ValueError as exc:  # ConfigError included
        fail(str(exc))
    cfg, limit = fit_timeout(cfg, timeout)
    interactive = sys.stderr.isatty()
    if interactive:
        click.echo("investigating (read-only tools)...", err=True)
    lookup = _findings_lookup(path) if path else None
    try:
        dx = asyncio.run(asyncio.wait_for(_ask(cfg, question, _progress if interactive else None, lookup), limit))
    except TimeoutError:
        fail(f"no answer within {limit:g}s (--timeout): Prometheus, Slurm or the model server is too slow", code=3)
    if as_json:
        click.echo(json.dumps({"question": question, **dataclasses.asdict(dx)}, indent=2, default=str))
    else:
        click.echo(render_markdown(dx), nl=False)


def fit_timeout(cfg: InvestigationConfig, timeout: float | None) -> tuple[InvestigationConfig, float]:
    """The config to ask with, its LLM budget shortened to fit `timeout`, and the overall limit.

    A third of the time (at most the tools' usual worst case) is kept for the evidence; the LLM
    gets the rest, so an answer (the triage, at least) comes before the limit.
    """
    needed = time_needed(cfg)
    if timeout is None:
        return cfg, needed + 10  # the agent's own worst case, plus the findings lookup
    if cfg.llm.enabled:
        evidence = min(timeout / 3, EVIDENCE_CALLS * cfg.tool_timeout_seconds)
        budget = max(1.0, min(cfg.llm.budget_seconds, timeout - evidence - LLM_GRACE_SECONDS))
        per_call = min(cfg.llm.timeout_seconds, budget)
        cfg = dataclasses.replace(
            cfg, llm=dataclasses.replace(cfg.llm, budget_seconds=budget, timeout_seconds=per_call)
        )
    tools = min(cfg.tool_timeout_seconds, max(0.1, timeout / 3))
    return dataclasses.replace(cfg, tool_timeout_seconds=tools), timeout


def _findings_lookup(path: Path) -> FindingsLookup:
    """Reads the firing findings of a node from the agent agent.yml describes (its listen address
    and token). Fails when called, not here: an unreadable token only leaves the findings out."""

    def lookup(node: str) -> list[dict[str, Any]]:
        try:
            raw, base = load_file(path)
            if not raw.get("listen"):
                return []  # agent.yml names no agent (a bare investigation config): nothing to ask
            config = build_config(raw, base)
        except ConfigError as exc:
            raise RuntimeError(str(exc)) from None
        client = FindingsClient(default_server(config), config.token, timeout=5.0)
        try:
            return client.findings({"node": node, "status": "firing"}, 20)
        except click.ClickException as exc:
            raise RuntimeError(exc.message) from None

    return lookup


async def _ask(cfg: InvestigationConfig, question: str, on_event: Any, findings: FindingsLookup | None) -> Diagnosis:
    investigation = Investigation(cfg, on_event=on_event)
    try:
        return await investigation.ask(question, findings)
    finally:
        await investigation.close()
