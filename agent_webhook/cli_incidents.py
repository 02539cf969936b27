"""`gpu-watchdog incidents`, `gpu-watchdog ack` and `gpu-watchdog unack`: through the agent's API.

They find the agent and its token as `gpu-watchdog findings` does (flags, GPU_WATCHDOG_*,
agent.yml). `ack` and `unack` ask the agent, which creates or expires the Alertmanager silences
and records them on the findings (see agent_webhook.ack for why the agent does it, not the CLI).
"""

from __future__ import annotations

import getpass
import json
import os
from typing import Any

import click

from agent_webhook.cli_findings import ENV, FindingsClient, _config, config_option, default_server


class AgentClient(FindingsClient):
    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request(f"{self.server}{path}", body, method="POST", timeout=30)

    def incidents(self, filters: dict[str, str], limit: int) -> list[dict[str, Any]]:
        return self.paged("/incidents", "incidents", filters, limit)


def _client(config_path: str | None, server: str | None, token_file: str | None, ca_file: str | None) -> AgentClient:
    config = _config(config_path, {"token_file": token_file})
    return AgentClient(server or default_server(config), config.token, ca_file=ca_file)


def _printable(text: Any) -> str:
    # Labels and summaries come from alerts: no terminal control sequences reach the terminal.
    return "".join(ch if ch.isprintable() else "?" for ch in str(text or ""))


def incident_lines(incident: dict[str, Any]) -> list[str]:
    created = str(incident.get("created_at") or "")[:19].replace("T", " ")
    where = incident.get("node") or incident.get("key") or "-"
    alerts = incident.get("alerts") or []
    head = (
        f"{created}  {incident.get('status', ''):8} {incident.get('id', '')}  {_printable(where)}  "
        f"{incident.get('firing', 0)}/{len(alerts)} firing  {_printable(', '.join(incident.get('alertnames') or []))}"
    )
    lines = [head]
    for alert in alerts:
        gpu = f"/gpu{alert['gpu']}" if alert.get("gpu") else ""
        ack = f"  acked by {_printable(alert['acknowledged_by'])}" if alert.get("acknowledged_by") else ""
        lines.append(
            f"    {alert.get('status', ''):8} {_printable(alert.get('alertname')):24} "
            f"{_printable(alert.get('node') or '-')}{_printable(gpu):8} {alert.get('finding_id') or '(investigating)'}"
            f"{ack}"
        )
    return lines


def _server_options(fn: Any) -> Any:
    for option in reversed(
        [
            config_option(),
            click.option("--server", envvar=f"{ENV}_SERVER", help="Agent URL [default: from agent.yml's listen]"),
            click.option(
                "--token-file", type=click.Path(dir_okay=False), envvar=f"{ENV}_TOKEN_FILE", help="Bearer token."
            ),
            click.option("--ca-file", type=click.Path(dir_okay=False), default=None, help="CA bundle for https."),
        ]
    ):
        fn = option(fn)
    return fn


@click.command("incidents")
@_server_options
@click.option("--alertname", default=None, help="Incidents with an alert of this name.")
@click.option("--node", default=None)
@click.option("--status", type=click.Choice(["firing", "resolved"]), default=None)
@click.option("--since", default=None, help="RFC 3339, unix seconds, or a duration back from now (15m, 2h, 7d).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON.")
def incidents_command(  # noqa: PLR0917 - one parameter per click option
    config_path: str | None,
    server: str | None,
    token_file: str | None,
    ca_file: str | None,
    alertname: str | None,
    node: str | None,
    status: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List incidents (alerts of one node or Alertmanager group), newest last, with their alerts."""
    client = _client(config_path, server, token_file, ca_file)
    filters = {k: v for k, v in {"alertname": alertname, "node": node, "status": status, "since": since}.items() if v}
    found = client.incidents(filters, limit)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for incident in reversed(found):
        click.echo("\n".join(incident_lines(incident)))
    if not found:
        click.echo("no incidents", err=True)


def _path(target: str) -> str:
    if target.startswith("i-"):
        return f"/incidents/{target}"
    if target.startswith("f-"):
        return f"/findings/{target}"
    raise click.BadParameter("expected a finding id (f-...) or an incident id (i-...)", param_hint="TARGET")


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (containers): the uid says who
        return f"uid-{os.getuid()}"


@click.command("ack")
@click.argument("target", metavar="FINDING_OR_INCIDENT")
@click.option("--comment", "-c", required=True, help="Why (shown in the silence and the thread).")
@click.option("--for", "duration", default="2h", show_default=True, help="How long the silence lasts (30m, 2h, 7d).")
@click.option("--by", default=None, help="Who acknowledges (the silence's createdBy) [default: your user name]")
@_server_options
@click.option("--json", "as_json", is_flag=True, help="Print the agent's answer as JSON.")
def ack_command(  # noqa: PLR0917 - one parameter per click option
    target: str,
    comment: str,
    duration: str,
    by: str | None,
    config_path: str | None,
    server: str | None,
    token_file: str | None,
    ca_file: str | None,
    as_json: bool,
) -> None:
    """Acknowledge a finding or a whole incident: the agent silences its alerts in Alertmanager."""
    path = _path(target)
    client = _client(config_path, server, token_file, ca_file)
    answer = client.post(f"{path}/ack", {"comment": comment, "for": duration, "by": by or _user()})
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    for item in answer.get("acknowledged", []):
        click.echo(f"{item.get('finding_id')}: silence {item.get('silence_id')}")
    click.echo(f"acknowledged by {_printable(answer.get('acknowledged_by'))} until {answer.get('until')}")


@click.command("unack")
@click.argument("target", metavar="FINDING_OR_INCIDENT")
@click.option("--by", default=None, help="Who withdraws the acknowledgement [default: your user name]")
@_server_options
@click.option("--json", "as_json", is_flag=True, help="Print the agent's answer as JSON.")
def unack_command(  # noqa: PLR0917 - one parameter per click option
    target: str,
    by: str | None,
    config_path: str | None,
    server: str | None,
    token_file: str | None,
    ca_file: str | None,
    as_json: bool,
) -> None:
    """Withdraw an acknowledgement: the agent expires its Alertmanager silences."""
    path = _path(target)
    client = _client(config_path, server, token_file, ca_file)
    answer = client.post(f"{path}/unack", {"by": by or _user()})
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    for silence in answer.get("expired", []):
        click.echo(f"expired silence {silence}")
