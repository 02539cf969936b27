"""`gpu-watchdog deploy`: extra vars, progress lines, the summary, exit codes (real ansible-runner)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import click
import pytest

from agent_webhook.deploy_cli import parse_extra_vars
from agent_webhook.playbook_runner import Progress, format_summary, summary_rows

GPU_WATCHDOG = Path(sys.executable).parent / "gpu-watchdog"

PLAYBOOK = """\
- name: A small play
  hosts: all
  gather_facts: false
  tasks:
    - name: Nothing to do
      ansible.builtin.debug:
        msg: hello
    - name: Write a file
      ansible.builtin.copy:
        content: "{{ content }}"
        dest: "{{ target }}"
        mode: "0644"
    - name: Fail when asked
      ansible.builtin.fail:
        msg: "boom: {{ reason }}"
      when: reason | length > 0
"""


def test_extra_vars_parse_values_as_yaml_and_read_files(tmp_path: Path) -> None:
    varfile = tmp_path / "vars.yml"
    varfile.write_text("a: 1\nb: [x, y]\n")
    assert parse_extra_vars(["x=true", "n=3", "s=hello world", "empty=", f"@{varfile}", "a=2"]) == {
        "x": True,
        "n": 3,
        "s": "hello world",
        "empty": "",
        "a": 2,
        "b": ["x", "y"],
    }
    with pytest.raises(click.BadParameter, match="KEY=VALUE"):
        parse_extra_vars(["novalue"])
    with pytest.raises(click.BadParameter, match="cannot read"):
        parse_extra_vars([f"@{tmp_path / 'missing.yml'}"])
    varfile.write_text("- a list\n")
    with pytest.raises(click.BadParameter, match="mapping"):
        parse_extra_vars([f"@{varfile}"])


def test_summary_table_has_a_row_per_host() -> None:
    stats = {"ok": {"a": 5, "b": 4}, "changed": {"a": 2}, "failures": {"b": 1}, "dark": {}, "skipped": {"a": 1}}
    rows = summary_rows(stats)
    assert [r["host"] for r in rows] == ["a", "b"]
    assert rows[1] == {
        "host": "b",
        "ok": 4,
        "changed": 0,
        "failed": 1,
        "unreachable": 0,
        "skipped": 0,
        "rescued": 0,
        "ignored": 0,
    }
    table = format_summary(rows).splitlines()
    assert table[0].split() == ["host", "ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored"]
    assert table[2].split() == ["b", "4", "0", "1", "0", "0", "0", "0"]
    assert summary_rows(None) == []


def test_progress_without_a_terminal_prints_one_plain_line_per_result() -> None:
    out = io.StringIO()
    progress = Progress(stream=out, live=False)
    events = [
        {"event": "playbook_on_play_start", "event_data": {"play": "Slurm"}},
        {"event": "playbook_on_task_start", "event_data": {"task": "Write slurm.conf"}},
        {"event": "runner_on_ok", "event_data": {"host": "h1", "task": "Write slurm.conf", "role": "slurm_head",
                                                 "res": {"changed": True}}},
        {"event": "runner_on_skipped", "event_data": {"host": "h1", "task": "Skip me"}},
        {"event": "runner_on_failed", "event_data": {"host": "h2", "task": "Run slurmd",
                                                     "res": {"msg": "non-zero return code", "stderr": "no munge"}}},
        {"event": "runner_on_failed", "event_data": {"host": "h2", "task": "Secret",
                                                     "res": {"censored": "the output has been hidden"}}},
        {"event": "runner_on_unreachable", "event_data": {"host": "h3", "task": "Gathering Facts",
                                                          "res": {"msg": "ssh: connect refused"}}},
    ]  # fmt: skip
    for event in events:
        assert progress(event) is True
    progress.finish()
    assert out.getvalue().splitlines() == [
        "PLAY Slurm",
        "changed     h1  slurm_head : Write slurm.conf",
        "FAILED      h2  Run slurmd: non-zero return code | no munge",
        "FAILED      h2  Secret: the output has been hidden",
        "UNREACHABLE h3  Gathering Facts: ssh: connect refused",
    ]
    assert progress.counts == {"h1": {"changed": 1, "skipped": 1}, "h2": {"failed": 2}, "h3": {"unreachable": 1}}


def test_progress_on_a_terminal_redraws_one_status_line() -> None:
    out = io.StringIO()
    progress = Progress(stream=out, live=True)
    progress({"event": "playbook_on_task_start", "event_data": {"task": "Install munge"}})
    progress({"event": "runner_on_ok", "event_data": {"host": "h1", "task": "Install munge", "res": {"changed": True}}})
    progress.finish()
    text = out.getvalue()
    assert "\r\x1b[2K" in text and "Install munge" in text and "h1: 1 ok, 1 changed" in text
    assert "\n" not in text  # a status line, not a log


def _ansible_dir(tmp_path: Path) -> Path:
    base = tmp_path / "ansible"
    (base / "inventory").mkdir(parents=True)
    (base / "site.yml").write_text(PLAYBOOK)
    (base / "ansible.cfg").write_text("[defaults]\nretry_files_enabled = false\n")
    (base / "inventory" / "local.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    return base


def _deploy(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GPU_WATCHDOG), "deploy", "--ansible-dir", str(base), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_deploy_runs_the_playbook_and_summarises(tmp_path: Path) -> None:
    base = _ansible_dir(tmp_path)
    target = tmp_path / "out.txt"
    common = ["-e", f"target={target}", "-e", "content=v1", "-e", "reason="]
    first = _deploy(base, *common)
    assert first.returncode == 0, first.stdout + first.stderr
    assert target.read_text() == "v1"
    assert (
        format_summary(summary_rows({"ok": {"localhost": 2}, "changed": {"localhost": 1}, "skipped": {"localhost": 1}}))
        in first.stdout
    )
    assert "changed     localhost  Write a file" in first.stderr
    assert "deploy: successful" in first.stderr
    check = _deploy(base, "--check", *common[:2], "-e", "content=v2", "-e", "reason=")
    assert check.returncode == 0, check.stderr
    assert target.read_text() == "v1"  # check mode changed nothing, and said it would
    assert "(check mode)" in check.stderr and "changed     localhost  Write a file" in check.stderr


def test_deploy_exits_non_zero_with_the_failure_and_the_summary(tmp_path: Path) -> None:
    base = _ansible_dir(tmp_path)
    result = _deploy(base, "-e", f"target={tmp_path / 'x'}", "-e", "content=v", "-e", "reason=disk full")
    assert result.returncode == 2
    assert "FAILED      localhost  Fail when asked: boom: disk full" in result.stderr
    assert "a host failed (hosts: localhost)" in result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[1][:5] == ["localhost", "2", "1", "1", "0"]


def test_deploy_names_what_is_missing(tmp_path: Path) -> None:
    base = _ansible_dir(tmp_path)
    result = _deploy(base, "--playbook", "nope.yml")
    assert result.returncode == 2
    assert "no playbook 'nope.yml'" in result.stderr and "site.yml" in result.stderr
    unreachable = _deploy(base, "-i", str(tmp_path / "inv.yml"))
    assert unreachable.returncode == 2 and "does not exist" in unreachable.stderr
