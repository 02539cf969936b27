"""`gpu-watchdog deploy`: run the Ansible playbooks (ansible/) through ansible-runner.

Progress goes to stderr while the playbook runs (a live status line on a terminal, one plain
line per task result otherwise); a summary table per host goes to stdout at the end. The exit
code is 0 only when no host failed and none was unreachable.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click
import yaml

ANSIBLE_DIR_ENV = "GPU_WATCHDOG_ANSIBLE_DIR"
STAT_COLUMNS = (("ok", "ok"), ("changed", "changed"), ("failures", "failed"), ("dark", "unreachable"))
EXTRA_COLUMNS = (("skipped", "skipped"), ("rescued", "rescued"), ("ignored", "ignored"))
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    "runner_item_on_failed": "failed",
}
# ansible-playbook's own exit codes worth naming in the error line.
PLAYBOOK_EXIT_REASONS = {1: "error", 2: "a host failed", 4: "a host was unreachable", 5: "bad options", 250: "crashed"}


def default_ansible_dir() -> Path | None:
    """The playbooks: $GPU_WATCHDOG_ANSIBLE_DIR, the checkout this package runs from, or ./ansible."""
    candidates = [os.environ.get(ANSIBLE_DIR_ENV, ""), str(Path(__file__).resolve().parent.parent / "ansible")]
    candidates.append(str(Path.cwd() / "ansible"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "site.yml").is_file():
            return Path(candidate).resolve()
    return None


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


@dataclass
class Progress:
    """Turns ansible-runner events into progress lines on `stream`."""

    stream: TextIO
    live: bool
    task: str = ""
    tasks_started: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    _line_open: bool = False
    _last_draw: float = 0.0

    def __call__(self, event: Mapping[str, Any]) -> bool:
        kind = str(event.get("event", ""))
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self._print(f"PLAY {data.get('play', '')}")
        elif kind == "playbook_on_task_start":
            self.task = str(data.get("task", ""))
            self.tasks_started += 1
            self._draw(force=False)
        elif kind in RESULT_EVENTS:
            self._result(kind, data)
        return True  # keep the event in runner's artifacts too

    def _result(self, kind: str, data: Mapping[str, Any]) -> None:
        host = str(data.get("host", "?"))
        res = data.get("res") or {}
        status = RESULT_EVENTS[kind]
        if status == "ok" and isinstance(res, Mapping) and res.get("changed"):
            status = "changed"
        if kind != "runner_item_on_failed":
            per_host = self.counts.setdefault(host, {})
            per_host[status] = per_host.get(status, 0) + 1
        failed = status in ("failed", "unreachable") and not data.get("ignore_errors")
        task = str(data.get("task", self.task))
        role = str(data.get("role") or "")
        title = f"{role} : {task}" if role else task
        if failed:
            self._print(f"{status.upper():11} {host}  {title}: {_result_message(res)}")
        elif not self.live:
            if status != "skipped":
                self._print(f"{status:11} {host}  {title}")
        else:
            self._draw(force=status == "changed")

    def _draw(self, force: bool) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        hosts = "  ".join(
            f"{host}: {c.get('ok', 0) + c.get('changed', 0)} ok, {c.get('changed', 0)} changed"
            for host, c in sorted(self.counts.items())
        )
        width = shutil.get_terminal_size((100, 20)).columns
        line = f"[{self.tasks_started:3}] {self.task}  {hosts}"
        self.stream.write("\r\x1b[2K" + line[: width - 1])
        self.stream.flush()
        self._line_open = True

    def _print(self, line: str) -> None:
        if self._line_open:
            self.stream.write("\r\x1b[2K")
            self._line_open = False
        self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._line_open:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._line_open = False


def _result_message(res: Any) -> str:
    if not isinstance(res, Mapping):
        return str(res)[:500]
    if res.get("censored"):
        return str(res["censored"])
    message = str(res.get("msg") or "").strip()
    stderr = str(res.get("stderr") or "").strip()
    parts = [p for p in (message, stderr[-800:]) if p]
    return " | ".join(parts)[:1200] or "(no message)"


def summary_rows(stats: Mapping[str, Mapping[str, int]] | None) -> list[dict[str, Any]]:
    """One row per host from ansible-runner's stats: ok, changed, failed, unreachable, ..."""
    stats = stats or {}
    hosts = sorted({host for key, _ in STAT_COLUMNS + EXTRA_COLUMNS for host in (stats.get(key) or {})})
    rows = []
    for host in hosts:
        row: dict[str, Any] = {"host": host}
        for key, label in STAT_COLUMNS + EXTRA_COLUMNS:
            row[label] = int((stats.get(key) or {}).get(host, 0))
        rows.append(row)
    return rows


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    labels = [label for _, label in STAT_COLUMNS + EXTRA_COLUMNS]
    width = max([len("host"), *(len(str(r["host"])) for r in rows)])
    lines = ["host".ljust(width) + "  " + "  ".join(label.rjust(len(label)) for label in labels)]
    for row in rows:
        lines.append(str(row["host"]).ljust(width) + "  " + "  ".join(str(row[lb]).rjust(len(lb)) for lb in labels))
    return "\n".join(lines)


def run_playbook(
    *,
    ansible_dir: Path,
    playbook: str,
    inventory: Path,
    limit: str | None,
    tags: str | None,
    skip_tags: str | None,
    check: bool,
    diff: bool,
    extra_vars: Mapping[str, Any],
    verbosity: int,
    event_handler: Callable[[Mapping[str, Any]], bool],
    timeout: float | None = None,
    envvars: Mapping[str, str] | None = None,
) -> tuple[int, list[dict[str, Any]], str]:
    """Run one playbook with ansible-runner: (ansible-playbook's rc, per-host rows, runner status).

    With `timeout` (seconds), ansible-runner kills the playbook after that long (status "timeout").
    """
    import ansible_runner

    cmdline = []
    if check:
        cmdline.append("--check")
    if diff:
        cmdline.append("--diff")
    if skip_tags:
        cmdline += ["--skip-tags", skip_tags]
    # ansible-runner runs `ansible-playbook` from PATH: use the one installed beside this Python.
    bin_dir = str(Path(sys.executable).parent)
    if (Path(bin_dir) / "ansible-playbook").exists() and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    env = {"ANSIBLE_CONFIG": str(ansible_dir / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    env.update(envvars or {})
    with tempfile.TemporaryDirectory(prefix="gpu-watchdog-deploy-") as private:
        runner = ansible_runner.run(
            private_data_dir=private,
            project_dir=str(ansible_dir),
            playbook=playbook,
            inventory=str(inventory),
            limit=limit or None,
            tags=tags or None,
            extravars=dict(extra_vars),
            cmdline=" ".join(_quote(a) for a in cmdline) or None,
            envvars=env,
            verbosity=verbosity or None,
            quiet=True,
            event_handler=event_handler,
            suppress_env_files=True,
            timeout=max(1, int(timeout)) if timeout else None,
        )
        rc = runner.rc if isinstance(runner.rc, int) else 1
        return rc, summary_rows(runner.stats), str(runner.status)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


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
