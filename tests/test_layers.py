"""The layers of docs/architecture.md hold: imports run only downward.

    gpu_watchdog_core  <-  exporters  <-  agent_webhook

Read from the source with `ast` (every import statement, at module level, in functions and under
TYPE_CHECKING), not by importing, so a forbidden import fails here even on a code path no other
test runs. A module "reaches" another when a chain of such imports leads there; importing
`a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`, so those count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("gpu_watchdog_core", "exporters", "agent_webhook")


def _module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def direct_imports(module: str) -> frozenset[str]:
    """The project modules `module` imports, with the packages whose __init__ that runs."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: Iterable[str] = ()
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import name` imports the submodule pkg.name when there is one.
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            if name in MODULES:
                found.add(name)
                found.update(p for p in _parents(name) if p in MODULES)
    found.discard(module)
    return frozenset(found)


def reaches(module: str) -> set[str]:
    """Every project module importing `module` runs, through any chain of imports."""
    seen: set[str] = set()
    todo = [module, *(p for p in _parents(module) if p in MODULES)]
    while todo:
        current = todo.pop()
        for name in direct_imports(current):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    seen.discard(module)
    return seen


def _in(package: str, names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


def test_the_scanner_sees_imports() -> None:
    # Without this, a scanner that finds nothing would pass every rule below.
    assert "agent_webhook.store" in direct_imports("agent_webhook.service")
    assert "gpu_watchdog_core.logs" in direct_imports("agent_webhook.store")
    assert "gpu_watchdog_core.server" in reaches("exporters.gpu.cli")
    assert "agent_webhook.store" in reaches("agent_webhook.cli")
    assert len(MODULES) > 50


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("gpu_watchdog_core")))
def test_core_imports_no_program(module: str) -> None:
    imported = direct_imports(module)
    assert not _in("exporters", imported) + _in("agent_webhook", imported), module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("exporters")))
def test_exporters_never_import_the_agent(module: str) -> None:
    assert not _in("agent_webhook", reaches(module)), module


def test_agent_config_is_plain_data() -> None:
    # A configuration module knows nothing of storage, and so cannot hand the store to the
    # investigation or the sinks, which import it.
    reached = reaches("agent_webhook.config")
    assert "agent_webhook.store" not in reached
    assert not _in("agent_webhook.sinks", reached) + _in("agent_webhook.actions", reached)


@pytest.mark.parametrize(
    "module",
    sorted(
        m
        for m in MODULES
        if m.startswith(("agent_webhook.investigation", "agent_webhook.sinks"))
        # `gpu-watchdog ask` is a CLI command that lives beside the investigation; it reads
        # findings from the agent over HTTP and may reach what the CLIs reach.
        and m != "agent_webhook.investigation.cli_ask"
    ),
)
def test_investigation_and_sinks_do_not_reach_the_store(module: str) -> None:
    assert "agent_webhook.store" not in reaches(module), module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("agent_webhook.actions")))
def test_actions_do_not_import_the_deploy_cli(module: str) -> None:
    reached = reaches(module)
    assert "agent_webhook.deploy_cli" not in reached, module
    assert "agent_webhook.playbook_runner" in reached or module != "agent_webhook.actions.engine"


def test_the_playbook_runner_knows_no_cli() -> None:
    reached = reaches("agent_webhook.playbook_runner")
    assert not [m for m in reached if m.endswith("_cli") or m == "agent_webhook.cli"], reached
