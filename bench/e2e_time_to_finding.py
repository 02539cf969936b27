"""Time from fault injection to the agent's finding, through the whole real pipeline (issue #10).

    .venv/bin/python bench/e2e_time_to_finding.py [--rounds 1]

Starts the stack of tests/harness/stack.py on loopback (private Slurm, gpu-exporter --backend
sim, slurm-exporter, Prometheus with the time-compressed rules, Alertmanager with the real
routes, agent-webhook with deterministic triage, a capture sink), then for each fault (XID 79,
double-bit ECC, thermal throttling, a Slurm drain) injects it, waits for its finding, clears
it and waits for the resolve. Prints seconds from injection to the finding's creation and to
the resolve reaching the sink. Floor (issue #10): under 30 s from injection to finding. Needs
root (the private Slurm cluster) and the Debian packages `make test` installs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.processes import ProcessManager
from tests.harness.stack import FAULTS, clear_until_resolved, inject_until_finding, start_stack

FLOOR_SECONDS = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="times to run each fault (default 1)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="gw-e2e-bench-") as tmp:
        procs = ProcessManager(Path(tmp) / "logs")
        began = time.monotonic()
        try:
            stack = start_stack(procs, Path(tmp) / "stack")
        except Exception as exc:
            print(f"cannot start the stack: {exc}", file=sys.stderr)
            procs.stop_all()
            return 2
        print(
            f"stack up in {time.monotonic() - began:.1f} s (time factor {stack.factor:g}: a rule's minute is a "
            f"second; scrape and evaluation 1 s); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
        )
        results: dict[str, list[float]] = {}
        failed = False
        try:
            for round_no in range(args.rounds):
                for fault in FAULTS.values():
                    finding, seconds = inject_until_finding(stack, fault)
                    cleared = time.time()
                    resolved = clear_until_resolved(stack, fault, finding["id"])
                    resolve_seconds = time.time() - cleared
                    results.setdefault(fault.name, []).append(seconds)
                    ok = finding["triage_rule"] == fault.triage_rule and fault.cause in finding["likely_cause"]
                    failed |= not ok or seconds >= FLOOR_SECONDS or resolved["status"] != "resolved"
                    print(
                        f"  round {round_no + 1}  {fault.name:30} injection -> finding {seconds:5.1f} s   "
                        f"clear -> resolve at the sink {resolve_seconds:5.1f} s   {finding['triage_rule']}"
                        f"{'' if ok else '  (WRONG TRIAGE)'}"
                    )
        finally:
            stack.stop()
            procs.stop_all()
        print("injection -> finding (floor: < 30 s each):")
        for name, values in results.items():
            print(f"  {name:30} median {statistics.median(values):5.1f} s   max {max(values):5.1f} s")
        print("FAIL" if failed else "PASS")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
