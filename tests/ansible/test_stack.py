"""`make down` / `make status` (scripts/stack.py) on real gw-supervise services under a temporary
prefix: what the roles leave on a host without systemd, without deploying anything (no root).
The full `make up` path is proven by test_site.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.ansible.conftest import make_target
from tests.ansible.test_supervise import SUPERVISE, Supervisor, _alive
from tests.harness.processes import wait_until


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    shutil.copy(SUPERVISE, tmp_path / "bin" / "gw-supervise")
    return tmp_path


def test_down_stops_every_service_in_order_and_twice_is_a_no_op(prefix: Path) -> None:
    sup = Supervisor(prefix)
    # Our own units directory: on a host with systemd, down must not touch the real gw-* units.
    where = (f"-e gpu_watchdog_prefix={prefix}", f"-e gw_service_unit_dir={prefix / 'units'}")
    pids = []
    try:
        for name in ("munged", "prometheus", "runpod-exporter"):  # runpod-exporter: unknown to stack.py
            sup.define(name, ["sleep", "300"])
            pids.append(sup.ensure(name)["pid"])
        status = make_target("status", *where)
        assert status.returncode == 0 and status.stdout.count("running (pid") == 3, status.stdout + status.stderr
        assert "http://127.0.0.1:9090/alerts" in status.stdout  # the summary, with the role's default port

        down = make_target("down", *where)
        assert down.returncode == 0, down.stdout + down.stderr
        # What stack.py does not know stops first, munged (Slurm authenticates with it) last.
        stopped = [line.split()[0] for line in down.stdout.splitlines() if line.endswith("stopped")]
        assert stopped == ["runpod-exporter", "prometheus", "munged"], down.stdout
        assert "stopped 3 service(s)" in down.stdout
        wait_until(lambda: not any(_alive(pid) for pid in pids), 20, what="the services' processes gone")
        assert not list((prefix / "run").glob("*.pid"))

        again = make_target("down", *where)
        assert again.returncode == 0 and again.stdout.strip() == "nothing was running", again.stdout
        after = make_target("status", *where)
        assert after.returncode == 0 and "running" not in after.stdout, after.stdout
    finally:
        sup.cli("stop", "--all")


def test_down_and_status_with_nothing_deployed(tmp_path: Path) -> None:
    where = f"-e gpu_watchdog_prefix={tmp_path / 'none'}"
    down = make_target("down", where, f"-e gw_service_unit_dir={tmp_path}")
    assert down.returncode == 0 and down.stdout.strip() == "nothing was running", down.stdout + down.stderr
    status = make_target("status", where, f"-e gw_service_unit_dir={tmp_path}")
    assert status.returncode == 0 and "nothing deployed under" in status.stdout


def test_a_bad_extra_variable_is_one_clear_error(tmp_path: Path) -> None:
    result = make_target("status", f"-e @{tmp_path / 'missing.yml'}")
    assert result.returncode != 0
    assert "stack.py status: -e @" in result.stderr and "No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    result = make_target("down", "-e justaword")
    assert "expected KEY=VALUE or @FILE" in result.stderr and "Traceback" not in result.stderr
