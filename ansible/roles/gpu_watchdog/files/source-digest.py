#!/usr/bin/env python3
"""Print a digest of the parts of a gpu-watchdog checkout that end up in the installed package."""

import hashlib
import sys
from pathlib import Path

root = Path(sys.argv[1])
digest = hashlib.sha256()
files = [root / name for name in ("setup.cfg", "pyproject.toml", "README.md")]
for package in ("gpu_watchdog_core", "exporters", "agent_webhook"):
    files += [p for p in (root / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
for path in sorted(files):
    if path.exists():
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
print(digest.hexdigest())
