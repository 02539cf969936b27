"""Stand-in Slurm commands for tests: shell scripts that print fixture output (see fixtures/README.md).

They sit in a directory passed as ``--slurm-bin-dir``, so the exporter runs real processes
through its real CLI backend; each script logs its calls and can be told to hang or fail by
creating a flag file next to it (``<command>.hang`` / ``<command>.fail``), or told to exit 0
after printing something else (``<command>.junk``: its content is printed instead of the output).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
COMMANDS = ("sinfo", "squeue", "scontrol", "sdiag", "sshare")

_SCRIPT = """#!/bin/sh
echo "$0 $*" >> "{dir}/calls.log"
if [ "$1" = "--version" ]; then echo "slurm {version}"; exit 0; fi
if [ -e "{dir}/{name}.hang" ]; then
    # A child in the same process group, named so a test can see whether it survived.
    sh -c 'sleep 60; true' "standin-hang-{marker}" &
    wait
fi
if [ -e "{dir}/{name}.fail" ]; then
    echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2
    exit 1
fi
if [ -e "{dir}/{name}.junk" ]; then cat "{dir}/{name}.junk"; exit 0; fi
if [ "$1" = "show" ] && [ "$2" = "config" ]; then echo "ClusterName             = standin"; exit 0; fi
case "$*" in
    *"show reservation"*) cat "{dir}/reservations.out"; exit 0 ;;
    *"show license"*) cat "{dir}/licenses.out"; exit 0 ;;
esac
cat "{dir}/{name}.out"
"""


def make_standins(directory: Path, version: str = "23.11", marker: str = "x") -> Path:
    """Stand-ins for every command, printing `fixtures/<version>/<command>.txt`."""
    directory.mkdir(parents=True, exist_ok=True)
    version_text = {"22.05": "22.05.8", "23.11": "23.11.4", "24.11": "24.11.1"}[version]
    for name in (*COMMANDS, "reservations", "licenses"):
        (directory / f"{name}.out").write_text((FIXTURES / version / f"{name}.txt").read_text())
    for name in COMMANDS:
        script = directory / name
        script.write_text(_SCRIPT.format(dir=directory, name=name, version=version_text, marker=marker))
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def calls(directory: Path) -> list[str]:
    log = directory / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def hung_children(marker: str) -> list[int]:
    """Pids of stand-in children still sleeping (they should die with their process group)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = (Path("/proc") / entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"standin-hang-{marker}".encode() in cmdline:
            found.append(int(entry))
    return found
