"""scripts/dev/rewrite_core_imports.py brings code written against exporters/common to gpu_watchdog_core."""

# rewrite-core-imports: skip (this file must keep the old names it feeds the script)

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "dev" / "rewrite_core_imports.py"

_spec = importlib.util.spec_from_file_location("rewrite_core_imports", SCRIPT)
assert _spec and _spec.loader
rewriter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rewriter)

OLD = """from exporters.common.logs import redact
import exporters.common.server
from exporters import common
from exporters import common as shared
logger="exporters.common.limits"
see `exporters/common/webconfig.py` and exporters.common
from exporters.common_extra import x
from myexporters.common import y
from exporters.gpu.cli import build
"""
NEW = """from gpu_watchdog_core.logs import redact
import gpu_watchdog_core.server
import gpu_watchdog_core as common
import gpu_watchdog_core as shared
logger="gpu_watchdog_core.limits"
see `gpu_watchdog_core/webconfig.py` and gpu_watchdog_core
from exporters.common_extra import x
from myexporters.common import y
from exporters.gpu.cli import build
"""


def test_rewrites_modules_paths_and_package_imports_only() -> None:
    assert rewriter.rewrite(OLD) == NEW
    assert rewriter.rewrite(NEW) == NEW  # idempotent


def test_rewrites_a_tree_in_place_and_checks_clean(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("from exporters.common.cli import fail\n")
    (tmp_path / "Makefile").write_text("lint:\n\tmypy exporters/common\n")
    (tmp_path / "notes.bin").write_bytes(b"exporters.common\xff")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--root", str(tmp_path), *args], capture_output=True, text=True
        )

    check = run("--check")
    assert check.returncode == 1 and "pkg/mod.py" in check.stdout and "Makefile" in check.stdout
    assert run().returncode == 0
    assert (tmp_path / "pkg" / "mod.py").read_text() == "from gpu_watchdog_core.cli import fail\n"
    assert (tmp_path / "Makefile").read_text() == "lint:\n\tmypy gpu_watchdog_core\n"
    assert (tmp_path / "notes.bin").read_bytes() == b"exporters.common\xff"  # not a file it rewrites
    assert run("--check").returncode == 0


def test_this_checkout_has_nothing_left_to_rewrite() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(REPO), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
