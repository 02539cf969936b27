"""Write grafana/dashboards/*.json from the dashboard code: `python -m grafana.generate [--check]`.

The output is deterministic (sorted keys, fixed uids and panel ids, two-space indent, trailing
newline), so the committed JSON can be compared byte for byte with a fresh run (`--check`, and
tests/grafana/test_dashboards.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as models

from grafana import findings, gpu_fleet, gpu_node, jobs_efficiency, slurm_cluster

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# file name -> builder; the file names are what provisioning loads and docs/grafana.md lists.
DASHBOARDS: dict[str, Callable[[], models.Dashboard]] = {
    "gpu-fleet.json": gpu_fleet.build,
    "gpu-node.json": gpu_node.build,
    "slurm-cluster.json": slurm_cluster.build,
    "jobs-efficiency.json": jobs_efficiency.build,
    "findings.json": findings.build,
}


def render(dashboard: models.Dashboard) -> str:
    return json.dumps(dashboard, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.generate", description=__doc__)
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="directory to write the JSON files into")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file differs")
    args = parser.parse_args(argv)

    stale: list[str] = []
    for name, text in rendered().items():
        path = args.out / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(
            f"out of date: {', '.join(stale)} (run `make dashboards` and commit the result)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
