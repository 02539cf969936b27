"""Every playbook parses (ansible-playbook --syntax-check) and everything passes ansible-lint's
production profile; the layout the docs promise exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"
VENV_BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(p.name for p in ANSIBLE_DIR.glob("*.yml"))
ROLES = ["munge", "slurm_head", "slurm_worker", "exporters", "prometheus", "alertmanager", "agent_webhook", "grafana"]
ENV = {**os.environ, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}


def test_every_playbook_passes_syntax_check() -> None:
    assert {"site.yml", "munge.yml", "slurm.yml", "exporters.yml", "monitoring.yml"} <= set(PLAYBOOKS)
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory/local.yml", *PLAYBOOKS],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile_is_clean() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--offline", "--profile", "production", "--strict", "--nocolor"],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output


def test_every_role_documents_prefixed_variables() -> None:
    for role in [*ROLES, "gw_service", "gpu_watchdog", "web_auth", "victoria_metrics"]:
        base = ANSIBLE_DIR / "roles" / role
        for part in ("defaults/main.yml", "meta/main.yml", "tasks/main.yml"):
            assert (base / part).is_file(), f"{role}: {part}"
        text = (base / "defaults" / "main.yml").read_text()
        defaults = yaml.safe_load(text) or {}
        assert defaults, role
        lines = text.splitlines()
        for name in defaults:
            assert name.startswith(f"{role}_"), f"{role}: {name} lacks the role prefix"
            # Every variable has a comment in the block above it (or shares one with its neighbours).
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
            block = lines[:index]
            while block and not block[-1].startswith("#") and block[-1].strip():
                block.pop()
            assert block and block[-1].startswith("#"), f"{role}: {name} is not documented"


def test_local_inventory_puts_every_group_on_localhost() -> None:
    inventory = yaml.safe_load((ANSIBLE_DIR / "inventory" / "local.yml").read_text())["all"]
    assert inventory["vars"]["ansible_connection"] == "local"
    for group in ("slurm_head", "slurm_workers", "monitoring"):
        assert list(inventory["children"][group]["hosts"]) == ["localhost"]
    worker = inventory["children"]["slurm_workers"]["hosts"]["localhost"]
    assert worker["slurm_node_gpu_sim"] is True and worker["slurm_node_gpus"] > 0
