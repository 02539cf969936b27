"""`gpu-watchdog deploy`: run the Ansible playbooks (ansible/) through ansible-runner.

Progress goes to stderr while the playbook runs (a live status line on a terminal, one plain
line per task result otherwise); a summary table per host goes to stdout at the end. The exit
code is 0 only when no host failed and none was unreachable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from agent_webhook.playbook_runner import ANSIBLE_DIR_ENV, Progress, default_ansible_dir, format_summary, run_playbook

# ansible-playbook's own exit codes worth naming in the error line.
PLAYBOOK_EXIT_REASONS = {1: "error", 2: "a host failed", 4: "a host was unreachable", 5: "bad options", 250: "crashed"}


def parse_extra_vars(values: Sequence[str]) -> dict[str, Any]:
    """`-e KEY=VALUE` (VALUE read as YAML: true, 3, [a, b]) or `-e @vars.yml`, later ones win."""
    extra: dict[str, Any] = {}
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                loaded = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="-e") from None
            if not isinstance(loaded, dict):
                raise click.BadParameter(f"{path} must hold a mapping of variables", param_hint="-e")
            extra.update(loaded)
            continue
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE or @FILE, got {value!r}", param_hint="-e")
        try:
            extra[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            extra[key.strip()] = raw
    return extra


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "-i",
    "--inventory",
    type=click.Path(exists=True, dir_okay=True, path_type=Path),
    default=None,
    help="Inventory file or directory [default: ANSIBLE_DIR/inventory/local.yml: everything on this machine].",
)
@click.option("--playbook", default="site.yml", help="Playbook in ANSIBLE_DIR: site.yml, munge.yml, slurm.yml, ...")
@click.option("-l", "--limit", default=None, help="Only these hosts or groups (Ansible pattern).")
@click.option("-t", "--tags", default=None, help="Only tasks with these tags (comma-separated): munge, slurm, ...")
@click.option("--skip-tags", default=None, help="Skip tasks with these tags.")
@click.option("-C", "--check", is_flag=True, help="Dry run: report what would change, change nothing.")
@click.option("-D", "--diff", is_flag=True, help="Show the differences in changed files.")
@click.option(
    "-e", "--extra-vars", "extra_vars", multiple=True, metavar="KEY=VALUE|@FILE", help="Extra variables (repeatable)."
)
@click.option(
    "--ansible-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    envvar=ANSIBLE_DIR_ENV,
    help="Directory with the playbooks [default: the checkout's ansible/].",
)
@click.option("-v", "--verbose", count=True, help="More Ansible output in failures (repeatable).")
def deploy(
    *,
    inventory: Path | None,
    playbook: str,
    limit: str | None,
    tags: str | None,
    skip_tags: str | None,
    check: bool,
    diff: bool,
    extra_vars: tuple[str, ...],
    ansible_dir: Path | None,
    verbose: int,
) -> None:
    """Deploy munge, Slurm, the exporters and the monitoring stack with Ansible."""
    base = ansible_dir.resolve() if ansible_dir else default_ansible_dir()
    if base is None:
        raise click.UsageError(f"no playbooks found: pass --ansible-dir or set {ANSIBLE_DIR_ENV} to the ansible/ dir")
    if not (base / playbook).is_file():
        available = ", ".join(sorted(p.name for p in base.glob("*.yml")))
        raise click.UsageError(f"no playbook {playbook!r} in {base} (available: {available})")
    inventory_path = (inventory or base / "inventory" / "local.yml").resolve()
    progress = Progress(stream=sys.stderr, live=sys.stderr.isatty())
    click.echo(
        f"deploy: {playbook} on {inventory_path}{' (check mode)' if check else ''}"
        + (f", limit {limit}" if limit else "")
        + (f", tags {tags}" if tags else ""),
        err=True,
    )
    started = time.monotonic()
    try:
        rc, rows, status = run_playbook(
            ansible_dir=base,
            playbook=playbook,
            inventory=inventory_path,
            limit=limit,
            tags=tags,
            skip_tags=skip_tags,
            check=check,
            diff=diff,
            extra_vars=parse_extra_vars(extra_vars),
            verbosity=verbose,
            event_handler=progress,
        )
    finally:
        progress.finish()
    elapsed = time.monotonic() - started
    if rows:
        click.echo(format_summary(rows))
    failed_hosts = [r["host"] for r in rows if r["failed"] or r["unreachable"]]
    if rc == 0 and not failed_hosts:
        click.echo(f"deploy: {status} in {elapsed:.0f}s", err=True)
        return
    reason = PLAYBOOK_EXIT_REASONS.get(rc, f"exit code {rc}")
    hosts = f" (hosts: {', '.join(failed_hosts)})" if failed_hosts else ""
    click.echo(f"deploy: {status}: {reason}{hosts} after {elapsed:.0f}s", err=True)
    sys.exit(rc if rc else 1)
