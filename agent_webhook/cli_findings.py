"""`gpu-watchdog findings` (read the agent's findings API) and `gpu-watchdog investigate ALERT.json`.

Both read the same settings as the service: flags, then GPU_WATCHDOG_* variables, then agent.yml
(`--config`). `findings` talks to a running agent over HTTP with its bearer token;
`investigate` runs the investigation in this process, with no service and no database.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from agent_webhook.config import DEFAULT_PREFIX, AgentConfig, ConfigError, deployed_config, load_config
from agent_webhook.model import Alert, Diagnosis
from agent_webhook.payload import PayloadError, parse_payload
from agent_webhook.sinks.render import action_text
from agent_webhook.terminal import terminal_safe
from agent_webhook.wiring import make_investigator
from gpu_watchdog_core.logs import redact, redact_value, strip_userinfo

ENV = "GPU_WATCHDOG"
_PAGE = 1000


def config_option() -> Any:
    """`--config`: flags > GPU_WATCHDOG_* env > this agent.yml > defaults; after `make up` the
    deployed one, so that the commands need no flags on the host the suite runs on."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar=f"{ENV}_CONFIG",
        default=lambda: str(deployed_config() or "") or None,
        show_default=f"{DEFAULT_PREFIX}/etc/agent.yml if it exists; $GPU_WATCHDOG_PREFIX moves it",
        help="agent.yml (the agent's URL, token file, Prometheus and Alertmanager URLs)",
    )


def _config(config_path: str | None, overrides: dict[str, Any]) -> AgentConfig:
    try:
        return load_config(Path(config_path) if config_path else None, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def default_server(config: AgentConfig) -> str:
    host, _, port = config.listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    scheme = "https" if config.web_config.tls else "http"
    return f"{scheme}://{host}:{port}"


class FindingsClient:
    def __init__(self, server: str, token: str | None, *, ca_file: str | None = None, timeout: float = 10.0) -> None:
        # Credentials in --server (https://user:pass@host) become basic auth and never appear in
        # a message: `server` is kept without them.
        parts = urllib.parse.urlsplit(server.rstrip("/"))
        self.basic: str | None = None
        if parts.username is not None or parts.password is not None:
            user = urllib.parse.unquote(parts.username or "")
            password = urllib.parse.unquote(parts.password or "")
            self.basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.server = strip_userinfo(server.rstrip("/"))
        self.token = token
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.server}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return self.request(url)

    def request(
        self, url: str, body: dict[str, Any] | None = None, *, method: str = "GET", timeout: float | None = None
    ) -> Any:
        """One JSON call to the agent; errors become a ClickException naming the server, redacted."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.basic:
            headers["Authorization"] = f"Basic {self.basic}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout, context=self.context) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", "")
            except (ValueError, AttributeError):
                reason = ""
            raise click.ClickException(
                f"{self.server} answered {exc.code}{': ' + redact(reason) if reason else ''}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = redact(str(getattr(exc, "reason", exc)))
            raise click.ClickException(f"cannot reach {self.server}: {reason}") from None

    def paged(self, path: str, key: str, filters: dict[str, str], limit: int) -> list[dict[str, Any]]:
        """Newest first, following cursors until `limit` items or the end."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(out) < limit:
            params = dict(filters, limit=str(min(_PAGE, limit - len(out))))
            if cursor:
                params["cursor"] = cursor
            page = self.get(path, params)
            out.extend(page.get(key, []))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    def findings(self, filters: dict[str, str], limit: int) -> list[dict[str, Any]]:
        return self.paged("/findings", "findings", filters, limit)


def _line(finding: dict[str, Any]) -> str:
    where = finding.get("node") or "-"
    if finding.get("gpu"):
        where += f"/gpu{finding['gpu']}"
    created = str(finding.get("created_at") or "")[:19].replace("T", " ")
    line = (
        f"{created}  {finding.get('status', ''):8} {finding.get('severity', ''):8} "
        f"{finding.get('alertname', ''):24} {where:20} {finding.get('id', '')}  {finding.get('summary', '')}"
    )
    extra = [text for text in (action_text(finding.get("action")), finding.get("resolved_reason")) if text]
    return "\n    ".join(terminal_safe(str(text), newlines=False) for text in [line, *extra])


@click.command("findings")
@config_option()
@click.option("--server", envvar=f"{ENV}_SERVER", help="Agent URL [default: from agent.yml's listen]")
@click.option("--token-file", type=click.Path(dir_okay=False), envvar=f"{ENV}_TOKEN_FILE", help="Bearer token.")
@click.option("--ca-file", type=click.Path(dir_okay=False), default=None, help="CA bundle for an https server.")
@click.option("--alertname", default=None)
@click.option("--node", default=None)
@click.option("--status", type=click.Choice(["firing", "resolved"]), default=None)
@click.option("--since", default=None, help="RFC 3339, unix seconds, or a duration back from now (15m, 2h, 7d).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Keep polling and print new and updated findings.")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True, help="--follow poll period."
)
@click.option("--json", "as_json", is_flag=True, help="JSON (one object per line with --follow).")
def findings_command(  # noqa: PLR0917 - one parameter per click option
    config_path: str | None,
    server: str | None,
    token_file: str | None,
    ca_file: str | None,
    alertname: str | None,
    node: str | None,
    status: str | None,
    since: str | None,
    limit: int,
    follow: bool,
    interval: float,
    as_json: bool,
) -> None:
    """List the agent's findings, newest first (or follow them as they come)."""
    config = _config(config_path, {"token_file": token_file})
    client = FindingsClient(server or default_server(config), config.token, ca_file=ca_file)
    filters = {k: v for k, v in {"alertname": alertname, "node": node, "status": status, "since": since}.items() if v}
    found = client.findings(filters, limit)
    if not follow:
        if as_json:
            click.echo(json.dumps(found, indent=2))
        else:
            for finding in reversed(found):
                click.echo(_line(finding))
            if not found:
                click.echo("no findings", err=True)
        return
    seen: dict[str, str] = {}
    first = True
    try:
        while True:
            for finding in reversed(found):
                key = str(finding.get("updated_at"))
                if seen.get(finding["id"]) == key:
                    continue
                seen[finding["id"]] = key
                click.echo(json.dumps(finding) if as_json else _line(finding))
            if first and not found and not as_json:
                click.echo("no findings yet; waiting (Ctrl-C to stop)", err=True)
            first = False
            time.sleep(interval)
            # Updates (a resolve) change updated_at, which `since` filters on: poll a window.
            window = dict(filters, since=str(time.time() - max(60.0, 5 * interval)))
            found = client.findings(window, _PAGE)
    except KeyboardInterrupt:
        return


# -- investigate --------------------------------------------------------------------------


def load_alerts(path: str) -> list[Alert]:
    """Alerts from a webhook payload file, a single alert object, or a list of alerts ('-' is stdin)."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise click.ClickException(f"{path}: not JSON: {exc}") from None
    if isinstance(data, list):
        data = {"alerts": data}
    elif isinstance(data, dict) and "alerts" not in data and "labels" in data:
        data = {"alerts": [data]}
    if isinstance(data, dict):
        for alert in data.get("alerts") or []:
            if isinstance(alert, dict):
                # A hand-written alert may leave out what only Alertmanager knows.
                alert.setdefault("status", "firing")
                alert.setdefault("startsAt", "1970-01-01T00:00:00Z")
                alert.setdefault("fingerprint", "local")
    try:
        alerts = parse_payload(json.dumps(data).encode())
    except PayloadError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    if not alerts:
        raise click.ClickException(f"{path}: no alerts in the payload")
    return alerts


def diagnosis_markdown(alert: Alert, diagnosis: Diagnosis) -> str:
    """The diagnosis's own markdown (it carries severity, cause and actions), framed by the alert."""
    lines = [
        f"# {diagnosis.summary}",
        "",
        f"**Alert:** {alert.alertname} ({alert.status})"
        + (f" on {alert.node}" if alert.node else "")
        + (f" GPU {alert.gpu}" if alert.gpu else ""),
        "",
        diagnosis.diagnosis_markdown,
    ]
    if diagnosis.evidence:
        lines += ["", "## Evidence", ""]
        for e in diagnosis.evidence:
            excerpt = e.excerpt.strip().replace("\n", " ")[:300]
            lines.append(f"- `{e.tool}` {json.dumps(e.arguments)} — {'ok' if e.ok else 'failed'}: {excerpt}")
    by = f"LLM ({diagnosis.llm_model})" if diagnosis.llm_used else "runbook triage (no LLM)"
    lines += ["", f"_Diagnosis by {by}._"]
    if diagnosis.degraded:
        lines.append(f"_Degraded: {'; '.join(diagnosis.degraded)}._")
    return terminal_safe(redact("\n".join(lines)))


@contextlib.asynccontextmanager
async def spinner(message: str, enabled: bool) -> AsyncIterator[None]:
    """A spinner on stderr while long work runs, only on a terminal (never in pipes or logs)."""
    if not enabled:
        yield
        return

    async def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            click.echo(f"\r{frame} {message}", nl=False, err=True)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(spin())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        click.echo("\r" + " " * (len(message) + 2) + "\r", nl=False, err=True)


@click.command("investigate")
@click.argument("alert_file", metavar="ALERT.json")
@config_option()
@click.option("--prometheus-url", envvar=f"{ENV}_PROMETHEUS_URL", default=None)
@click.option("--alertmanager-url", envvar=f"{ENV}_ALERTMANAGER_URL", default=None)
@click.option("--llm-base-url", envvar=f"{ENV}_LLM_BASE_URL", default=None)
@click.option("--llm-model", envvar=f"{ENV}_LLM_MODEL", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the diagnoses as JSON.")
def investigate_command(  # noqa: PLR0917 - one parameter per click option
    alert_file: str,
    config_path: str | None,
    prometheus_url: str | None,
    alertmanager_url: str | None,
    llm_base_url: str | None,
    llm_model: str | None,
    as_json: bool,
) -> None:
    """Investigate the alerts of one webhook payload (or one alert) here, and print the diagnosis."""
    config = _config(
        config_path,
        {
            "prometheus_url": prometheus_url,
            "alertmanager_url": alertmanager_url,
            "llm_base_url": llm_base_url,
            "llm_model": llm_model,
        },
    )
    alerts = load_alerts(alert_file)
    interactive = sys.stdout.isatty() and sys.stderr.isatty()

    def progress(tool: str, arguments: dict[str, Any], ok: bool, seconds: float) -> None:
        shown = terminal_safe(" ".join(f"{k}={redact(str(v))[:60]}" for k, v in arguments.items()), newlines=False)
        click.echo(
            f"\r\033[K  -> {terminal_safe(tool, newlines=False)} {shown} [{'ok' if ok else 'failed'}, {seconds:.2f}s]",
            err=True,
        )

    try:
        investigator = make_investigator(config, on_event=progress if interactive else None)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> list[Diagnosis]:
        results = []
        for i, alert in enumerate(alerts, 1):
            label = f"investigating {alert.alertname or 'alert'} ({i}/{len(alerts)})"
            async with spinner(label, interactive):
                results.append(await investigator.investigate(alert))
        return results

    diagnoses = asyncio.run(run())
    if as_json:
        out = [{"alert": asdict(a), "diagnosis": asdict(d)} for a, d in zip(alerts, diagnoses, strict=True)]
        click.echo(json.dumps(redact_value("diagnoses", out), indent=2, default=str))
        return
    click.echo("\n\n---\n\n".join(diagnosis_markdown(a, d) for a, d in zip(alerts, diagnoses, strict=True)))
