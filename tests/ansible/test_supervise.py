"""gw-supervise, the service manager the roles install where there is no systemd: real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.processes import free_port, http_get, wait_until

SUPERVISE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "gw_service" / "files" / "gw-supervise.py"


class Supervisor:
    def __init__(self, root: Path) -> None:
        self.conf_dir = root / "services"
        self.run_dir = root / "run"
        self.log_dir = root / "log"
        for path in (self.conf_dir, self.run_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)

    def define(self, name: str, argv: list[str], **extra: Any) -> Path:
        definition = {"name": name, "argv": argv, "log": str(self.log_dir / f"{name}.log"), **extra}
        path = self.conf_dir / f"{name}.json"
        path.write_text(json.dumps(definition))
        return path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SUPERVISE), "--conf-dir", str(self.conf_dir), "--run-dir", str(self.run_dir), *args],
            capture_output=True,
            text=True,
            timeout=90,
        )

    def ensure(self, name: str, *flags: str) -> dict[str, Any]:
        result = self.cli("ensure", name, *flags)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def state(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.run_dir / f"{name}.state").read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def supervisor(tmp_path: Path) -> Any:
    sup = Supervisor(tmp_path)
    yield sup
    sup.cli("stop", "--all")


def _http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]


def test_ensure_starts_once_and_is_idempotent(supervisor: Supervisor, tmp_path: Path) -> None:
    port = free_port()
    supervisor.define("web", _http_server(port), ready={"tcp": f"127.0.0.1:{port}", "timeout": 20}, cwd=str(tmp_path))
    first = supervisor.ensure("web")
    assert first["changed"] is True and first["action"] == "started"
    assert http_get(f"http://127.0.0.1:{port}/")[0] == 200
    second = supervisor.ensure("web")
    assert second == {"name": "web", "changed": False, "action": "none", "pid": first["pid"]}
    dry = supervisor.ensure("web", "--dry-run")
    assert dry["changed"] is False
    status = supervisor.cli("status", "web")
    assert status.returncode == 0 and json.loads(status.stdout)["running"] is True


def test_a_changed_watched_file_or_definition_restarts(supervisor: Supervisor, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "app.conf"
    config.write_text("a=1\n")
    ready = {"tcp": f"127.0.0.1:{port}", "timeout": 20}
    supervisor.define("web", _http_server(port), ready=ready, watch=[str(config)])
    first = supervisor.ensure("web")
    config.write_text("a=2\n")
    assert supervisor.ensure("web", "--dry-run") == {
        "name": "web",
        "changed": True,
        "action": "would be restarted",
        "pid": None,
    }
    assert _alive(first["pid"])  # a dry run touches nothing
    restarted = supervisor.ensure("web")
    assert restarted["action"] == "restarted" and restarted["pid"] != first["pid"]
    assert not _alive(first["pid"])
    supervisor.define("web", _http_server(port), ready=ready, watch=[str(config)], env={"X": "1"})
    assert supervisor.ensure("web")["action"] == "restarted"
    assert supervisor.ensure("web")["changed"] is False


def test_a_crashed_program_is_restarted_by_its_keeper(supervisor: Supervisor) -> None:
    port = free_port()
    supervisor.define("web", _http_server(port), ready={"tcp": f"127.0.0.1:{port}", "timeout": 20})
    pid = supervisor.ensure("web")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: supervisor.state("web").get("pid") not in (None, pid), 10, what="a new pid")
    new_pid = supervisor.state("web")["pid"]
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/", timeout=1)[0] == 200, 10, what="the restarted server")
    assert supervisor.state("web")["restarts"] == 1
    # ensure sees a healthy program started from the same definition: nothing to do.
    assert supervisor.ensure("web") == {"name": "web", "changed": False, "action": "none", "pid": new_pid}


def test_stop_ends_keeper_and_program_and_removes_pid_files(supervisor: Supervisor) -> None:
    supervisor.define("sleeper", ["sleep", "300"])
    started = supervisor.ensure("sleeper")
    keeper = int((supervisor.run_dir / "sleeper.pid").read_text())
    result = supervisor.cli("stop", "sleeper")
    assert json.loads(result.stdout) == {"name": "sleeper", "changed": True}
    wait_until(lambda: not _alive(started["pid"]) and not _alive(keeper), 10, what="both processes to exit")
    assert not list(supervisor.run_dir.iterdir())
    assert json.loads(supervisor.cli("stop", "sleeper").stdout)["changed"] is False
    assert supervisor.cli("status", "sleeper").returncode == 3


def test_a_program_that_dies_at_start_fails_with_its_log(supervisor: Supervisor) -> None:
    supervisor.define("broken", [sys.executable, "-c", "import sys; print('bad config: port'); sys.exit(2)"])
    started = time.monotonic()
    result = supervisor.cli("ensure", "broken")
    assert result.returncode == 1
    assert "exited right after starting" in result.stderr and "bad config: port" in result.stderr
    assert time.monotonic() - started < 15
    assert not (supervisor.run_dir / "broken.pid").exists()  # nothing left behind to restart forever


def test_secret_environment_reaches_the_program_and_its_change_restarts(supervisor: Supervisor, tmp_path: Path) -> None:
    env_file = supervisor.conf_dir / "printer.env"
    env_file.write_text("TOKEN=one\n")
    out = tmp_path / "seen"
    script = f"import os, time; open({str(out)!r}, 'w').write(os.environ['TOKEN']); time.sleep(300)"
    supervisor.define("printer", [sys.executable, "-c", script], env_file=str(env_file))
    supervisor.ensure("printer")
    wait_until(lambda: out.exists() and out.read_text() == "one", 10, what="the program to see TOKEN")
    env_file.write_text("TOKEN=two\n")
    assert supervisor.ensure("printer")["action"] == "restarted"
    wait_until(lambda: out.read_text() == "two", 10, what="the new TOKEN")
    assert "two" not in (supervisor.conf_dir / "printer.json").read_text()


def test_a_missing_definition_is_a_clear_error(supervisor: Supervisor) -> None:
    result = supervisor.cli("ensure", "nothing")
    assert result.returncode == 1
    assert "no definition for service 'nothing'" in result.stderr


def test_the_program_gets_the_open_files_limit(supervisor: Supervisor, tmp_path: Path) -> None:
    out = tmp_path / "limits"
    probe = "import resource, sys; open(sys.argv[1], 'w').write(repr(resource.getrlimit(resource.RLIMIT_NOFILE))); "
    probe += "import time; time.sleep(60)"
    supervisor.define("nofile", [sys.executable, "-c", probe, str(out)], nofile=4096, ready={"path": str(out)})
    supervisor.ensure("nofile")
    wait_until(lambda: out.exists() and out.read_text(), 20, what="the probe's limits")
    assert out.read_text() == "(4096, 4096)"


def test_a_service_run_as_another_user_gets_that_users_home_not_roots(supervisor: Supervisor) -> None:
    """Inherited from root, HOME=/root made Ansible's `~/.ansible/tmp` fail for the agent (user
    gpu-watchdog) when it ran scale.yml; like systemd's User=, the service gets its user's own."""
    if os.geteuid() != 0:
        pytest.skip("switching user needs root")
    import pwd

    nobody = pwd.getpwnam("nobody")
    # Printed to the log (opened by the keeper): nobody cannot write under pytest's 0700 tmp.
    probe = "import os, time; print('seen', os.environ['HOME'], os.environ['USER'], flush=True); time.sleep(60)"
    # /usr/bin/python3: a venv under /root would not be executable for nobody.
    supervisor.define("whoami", ["/usr/bin/python3", "-c", probe], user="nobody", env={"KEEP": "1"})
    supervisor.ensure("whoami")
    log = supervisor.log_dir / "whoami.log"
    wait_until(lambda: "seen " in log.read_text(), 20, what="the probe's environment")
    assert f"seen {nobody.pw_dir} nobody\n" in log.read_text()
