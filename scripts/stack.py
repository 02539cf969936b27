#!/usr/bin/env python3
"""`make up` / `make down` / `make status`: the whole suite on this machine, deployed for real.

    stack.py up     [-e KEY=VALUE | -e @FILE ...]   ansible-playbook -i inventory/local.yml site.yml
    stack.py down   [-e ...]                        stop everything `up` started
    stack.py status [-e ...]                        what runs, and where

`up` is the Ansible deploy path itself (the roles of ansible/, inventory/local.yml: this machine,
loopback, simulated GPUs), so it is idempotent the way the roles are; it then prints the URLs
and the next commands. `down` stops the services the roles manage, by gw-supervise's pid files
(containers, CI) or by their systemd units (gw-NAME.service), never by process name.
The same -e variables the deployment got tell `down` and `status` where it lives
(`gpu_watchdog_prefix`) and which ports it uses (tests deploy under a temporary prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    import yaml
except ImportError:  # `make down` without the venv: the system Python may lack PyYAML
    yaml = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = REPO / "ansible"
INVENTORY = ANSIBLE_DIR / "inventory" / "local.yml"
# The programs beside the running Python: `make up` runs this script with the checkout's venv.
BIN = Path(sys.executable).parent
# Stop order: consumers before what they depend on; munged last (Slurm authenticates with it).
STOP_ORDER = [
    "prometheus",
    "alertmanager",
    "agent-webhook",
    "gpu-exporter",
    "slurm-exporter",
    "slurmd",
    "slurmctld",
    "munged",
]
# Variables the summary needs, read from the roles' defaults (the single source of truth),
# then overridden by -e, as Ansible does.
DEFAULTS_FROM = {
    "gpu_watchdog_prefix": "gpu_watchdog",
    "prometheus_port": "prometheus",
    "alertmanager_port": "alertmanager",
    "agent_webhook_port": "agent_webhook",
    "exporters_gpu_port": "exporters",
    "exporters_slurm_port": "exporters",
    "slurm_head_ctld_port": "slurm_head",
    "gw_service_unit_dir": "gw_service",
}


class StackError(RuntimeError):
    pass


def _load(text: str, where: str) -> Any:
    """YAML (JSON is YAML too); JSON only when PyYAML is missing."""
    try:
        return yaml.safe_load(text) if yaml else json.loads(text)
    except ValueError as exc:  # yaml.YAMLError and json.JSONDecodeError are ValueErrors
        raise StackError(f"{where}: {exc}") from None


def parse_extra_vars(extra: list[str]) -> dict[str, Any]:
    """-e values as ansible-playbook reads them: @FILE (YAML or JSON), KEY=VALUE, or inline YAML."""
    out: dict[str, Any] = {}
    for item in extra:
        if item.startswith("@"):
            try:
                loaded = _load(Path(item[1:]).read_text(), f"-e {item}")
            except OSError as exc:
                raise StackError(f"-e {item}: {exc.strerror or exc}") from None
        elif item.lstrip().startswith("{"):
            loaded = _load(item, f"-e {item}")
        else:
            loaded = {}
            for pair in item.split():
                key, sep, value = pair.partition("=")
                if not sep:
                    raise StackError(f"-e {item!r}: expected KEY=VALUE or @FILE")
                loaded[key] = value
        if not isinstance(loaded, dict):
            raise StackError(f"-e {item}: not a mapping of variables")
        out.update(loaded)
    return out


def settings(extra: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, role in DEFAULTS_FROM.items():
        text = (ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml").read_text()
        # These defaults are plain scalars (no Jinja), so one line each is enough (and needs no YAML).
        found = re.search(rf"^{key}:\s*(\S+)\s*$", text, re.M)
        if not found:
            raise StackError(f"{key} is not a plain value in ansible/roles/{role}/defaults/main.yml")
        values[key] = found[1].strip("'\"")
    values.update(parse_extra_vars(extra))
    return values


def _supervise(prefix: Path) -> list[str]:
    return [
        "/usr/bin/python3",
        str(prefix / "bin" / "gw-supervise"),
        "--conf-dir",
        str(prefix / "services"),
        "--run-dir",
        str(prefix / "run"),
    ]


def _systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _units(unit_dir: Path) -> list[str]:
    """Services the roles installed as systemd units (gw-NAME.service), in stop order."""
    names = [p.name[len("gw-") : -len(".service")] for p in unit_dir.glob("gw-*.service")]
    return _ordered(names)


def _ordered(names: list[str]) -> list[str]:
    # Services this script does not know (added by other roles) stop first: nothing here needs them.
    unknown = sorted(n for n in set(names) if n not in STOP_ORDER)
    return unknown + [n for n in STOP_ORDER if n in names]


def _supervised(prefix: Path) -> list[str]:
    names = {p.stem for p in (prefix / "services").glob("*.json")}
    names |= {p.stem for p in (prefix / "run").glob("*.pid")}
    return _ordered(sorted(names))


def _agent_llm(prefix: Path) -> str | None:
    """The LLM endpoint the deployed agent was started with (from its service definition)."""
    try:
        argv = json.loads((prefix / "services" / "agent-webhook.json").read_text())["argv"]
    except (OSError, ValueError, KeyError):
        return None
    if "--llm-base-url" in argv:
        return str(argv[argv.index("--llm-base-url") + 1])
    # Or agent.yml names it (agent_webhook_config: {llm: {base_url: ...}}).
    if "--config" not in argv or yaml is None:
        return None
    try:
        config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) or {}
    except (OSError, IndexError, yaml.YAMLError):
        return None
    llm = config.get("llm") if isinstance(config, dict) else None
    return str(llm["base_url"]) if isinstance(llm, dict) and llm.get("base_url") else None


# ---------------------------------------------------------------- commands


def up(extra: list[str]) -> int:
    if os.geteuid() != 0:
        raise StackError("make up installs packages and configures munge and Slurm: run it as root")
    playbook = shutil.which("ansible-playbook", path=str(BIN)) or shutil.which("ansible-playbook")
    if not playbook:
        raise StackError(f"ansible-playbook not found beside {sys.executable} (run `make venv`)")
    values = settings(extra)
    argv = [playbook, "-i", str(INVENTORY), "site.yml"] + [arg for item in extra for arg in ("-e", item)]
    print(f"$ cd ansible && {' '.join(argv)}", flush=True)
    started = time.monotonic()
    # From ansible/, so its ansible.cfg (roles_path, plugins) applies; Ansible prints each task.
    result = subprocess.run(argv, cwd=ANSIBLE_DIR, check=False)
    if result.returncode != 0:
        print(f"\nmake up: the deployment failed (ansible-playbook exit {result.returncode}); see above.")
        print("Fix the cause and run it again: finished steps are skipped.")
        return result.returncode
    print(f"\nDeployed in {time.monotonic() - started:.0f}s.")
    summary(values)
    return 0


def summary(values: dict[str, Any]) -> None:
    prefix = Path(values["gpu_watchdog_prefix"])
    url = "http://127.0.0.1:{}".format
    token = prefix / "secrets" / "agent-token"
    llm = _agent_llm(prefix)
    rows = [
        ("Prometheus", f"{url(values['prometheus_port'])}/alerts", "alerts, targets, graphs"),
        ("Alertmanager", url(values["alertmanager_port"]), "routes every alert to the agent"),
        ("gpu-exporter", f"{url(values['exporters_gpu_port'])}/metrics", "4 simulated H100s"),
        ("slurm-exporter", f"{url(values['exporters_slurm_port'])}/metrics", "Slurm as Prometheus sees it"),
        ("agent-webhook", url(values["agent_webhook_port"]), f"findings API; token in {token}"),
        ("Slurm", f"slurmctld on port {values['slurm_head_ctld_port']}", "sinfo, srun --gres=gpu:1 ..."),
        ("Logs", str(prefix / "log"), "one file per service"),
        ("LLM", llm or "none: deterministic runbook triage", "LLM_BASE_URL=... make up to use vLLM"),
    ]
    print("\ngpu-watchdog is up on 127.0.0.1 (simulated GPUs):")
    for name, where, what in rows:
        print(f"  {name:15} {where:45} {what}")
    am = url(values["alertmanager_port"])
    # The CLI finds the agent, its token, Prometheus and Alertmanager in PREFIX/etc/agent.yml; a
    # prefix other than its default is named by GPU_WATCHDOG_PREFIX.
    env = "" if prefix == Path("/opt/gpu-watchdog") else f"GPU_WATCHDOG_PREFIX={prefix} "
    print(
        "\nNext, from this directory (README.md walks through it):\n"
        "  .venv/bin/gpu-watchdog sim inject --gpu 3 xid 79\n"
        f"  amtool alert --alertmanager.url={am}\n"
        f"  {env}.venv/bin/gpu-watchdog findings\n"
        f'  {env}.venv/bin/gpu-watchdog ask "what is wrong with gpu 3?"\n'
        "  .venv/bin/gpu-watchdog sim clear\n"
        "  make status      make down"
    )


def down(extra: list[str]) -> int:
    values = settings(extra)
    prefix = Path(values["gpu_watchdog_prefix"])
    stopped = 0
    if _systemd():
        for name in _units(Path(values["gw_service_unit_dir"])):
            unit = f"gw-{name}.service"
            active = subprocess.run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0
            if active:
                subprocess.run(["systemctl", "stop", unit], check=True)
                print(f"  {name:15} stopped (systemd {unit})")
                stopped += 1
    if (prefix / "bin" / "gw-supervise").exists():
        for name in _supervised(prefix):
            result = subprocess.run(
                [*_supervise(prefix), "stop", name], capture_output=True, text=True, timeout=120, check=False
            )
            if result.returncode != 0:
                raise StackError(f"gw-supervise stop {name}: {result.stderr.strip()}")
            if json.loads(result.stdout.splitlines()[-1]).get("changed"):
                print(f"  {name:15} stopped")
                stopped += 1
    print(f"stopped {stopped} service(s)" if stopped else "nothing was running")
    return 0


def status(extra: list[str]) -> int:
    values = settings(extra)
    prefix = Path(values["gpu_watchdog_prefix"])
    rows: list[tuple[str, str]] = []
    if _systemd():
        for name in _units(Path(values["gw_service_unit_dir"])):
            state = subprocess.run(
                ["systemctl", "is-active", f"gw-{name}.service"], capture_output=True, text=True, check=False
            ).stdout.strip()
            rows.append((name, f"{state} (systemd gw-{name}.service)"))
    if (prefix / "bin" / "gw-supervise").exists():
        result = subprocess.run([*_supervise(prefix), "status"], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            row = json.loads(line)
            state = f"running (pid {row['pid']})" if row["running"] else "stopped"
            if row["running"] and row["restarts"]:
                state += f", restarted {row['restarts']}x"
            rows.append((row["name"], state))
    if not rows:
        print(f"nothing deployed under {prefix} (make up)")
        return 0
    for name, state in rows:
        print(f"  {name:15} {state}")
    if any(state.startswith(("running", "active")) for _, state in rows):
        summary(values)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("-e", "--extra-vars", action="append", default=[], metavar="VARS", help="as ansible-playbook")
    args = parser.parse_args(argv)
    try:
        return {"up": up, "down": down, "status": status}[args.command](args.extra_vars)
    except StackError as exc:
        print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
