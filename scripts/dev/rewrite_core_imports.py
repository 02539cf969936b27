#!/usr/bin/env python3
"""Rewrite what still names ``exporters.common`` to the shared core's home, ``gpu_watchdog_core``.

The shared layer (HTTP server, web config, connection limits, logging and redaction, config
sections, the snapshot poller) moved from ``exporters/common/`` to ``gpu_watchdog_core/``
(issue 19, docs/architecture.md). Code written against the old home on another branch is brought
over by running this once after the merge, from the checkout's root:

    .venv/bin/python scripts/dev/rewrite_core_imports.py          # rewrite in place
    .venv/bin/python scripts/dev/rewrite_core_imports.py --check  # list, change nothing; exit 1 if any

It rewrites dotted module names (``exporters.common.logs``, ``import exporters.common``), paths
(``exporters/common/server.py``) and ``from exporters import common``, in .py, .md, .cfg, .toml,
.ini, .yml/.yaml, .j2, .sh and Makefile files that git tracks or would track. Idempotent: a
second run finds nothing to change. A file holding the line ``rewrite-core-imports: skip``
(its own test, which must keep old names) is left as it is.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

NEW = "gpu_watchdog_core"
# `exporters.common` or `exporters/common` as a whole name: not `exporters.common_x`, not
# `myexporters.common`.
_OLD = re.compile(r"(?<![\w.])exporters([./])common(?!\w)")
_FROM_IMPORT = re.compile(r"^(\s*)from exporters import common\b(?: as (\w+))?", re.MULTILINE)
_SUFFIXES = {".py", ".md", ".cfg", ".toml", ".ini", ".yml", ".yaml", ".j2", ".sh", ".txt"}
_NAMES = {"Makefile"}
SKIP_MARKER = "rewrite-core-imports: " + "skip"  # split, so this file does not carry the marker itself
_SKIP_DIRS = {".git", ".venv", ".run", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache"}


def rewrite(text: str) -> str:
    """The text with every old-home reference pointing at the new home."""
    text = _FROM_IMPORT.sub(lambda m: f"{m.group(1)}import {NEW} as {m.group(2) or 'common'}", text)
    return _OLD.sub(lambda m: NEW, text)


def candidate_files(root: Path) -> list[Path]:
    """Files git tracks or would track (untracked, not ignored); every file when not in git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
        paths = [root / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in root.rglob("*") if not (_SKIP_DIRS & set(p.relative_to(root).parts))]
    this = Path(__file__).resolve()
    return [p for p in paths if p.is_file() and (p.suffix in _SUFFIXES or p.name in _NAMES) and p.resolve() != this]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="checkout root [default: .]")
    parser.add_argument("--check", action="store_true", help="only list the files that would change")
    args = parser.parse_args(argv)
    changed = []
    for path in sorted(candidate_files(args.root)):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if SKIP_MARKER in text:
            continue
        new = rewrite(text)
        if new != text:
            changed.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in changed:
        print(path.relative_to(args.root) if path.is_relative_to(args.root) else path)
    stale = args.root / "exporters" / "common"
    if stale.is_dir() and any(stale.glob("*.py")):
        print(f"note: {stale} still holds modules; move them with git mv to {NEW}/", file=sys.stderr)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
