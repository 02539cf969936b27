"""Running an Ansible playbook through ansible-runner, shared by `gpu-watchdog deploy` and the scale actions.

`run_playbook()` runs one playbook of ansible/ and returns ansible-playbook's exit code, one
summary row per host and runner's status; `Progress` turns runner's events into progress lines
(a live status line on a terminal, one plain line per task result otherwise). Neither the CLI
(:mod:`agent_webhook.deploy_cli`) nor the action engine (:mod:`agent_webhook.actions.engine`)
owns it: both call it, so the actions need nothing of the CLI.
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


def default_ansible_dir() -> Path | None:
    """The playbooks: $GPU_WATCHDOG_ANSIBLE_DIR, the checkout this package runs from, or ./ansible."""
    candidates = [os.environ.get(ANSIBLE_DIR_ENV, ""), str(Path(__file__).resolve().parent.parent / "ansible")]
    candidates.append(str(Path.cwd() / "ansible"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "site.yml").is_file():
            return Path(candidate).resolve()
    return None


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
