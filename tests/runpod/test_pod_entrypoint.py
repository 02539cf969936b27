"""pod-image/entrypoint.sh run for real with stand-in binaries (munged, slurmctld, slurmd, ...).

Docker is not available here, so the image itself is not built; its entrypoint's logic is:
each stand-in records its argv and environment in a log and runs until signalled, or exits
at once with code 3 while a `crash-<name>` file exists.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.processes import ManagedProcess, ProcessManager, wait_until

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "pod-image" / "entrypoint.sh"
STANDINS = ("munged", "slurmctld", "slurmd", "gpu-exporter", "slurm-exporter", "vllm", "sshd")
MUNGE_KEY = os.urandom(64)
MUNGE_KEY_B64 = base64.b64encode(MUNGE_KEY).decode()

STANDIN = r"""#!/bin/bash
name=$(basename "$0")
dir=$(dirname "$0")
# Traps first: "start" in the log means the stand-in is ready for signals.
trap 'echo "signal $name $$ TERM" >>"$dir/calls.log"; exit 0' TERM
trap 'echo "signal $name $$ INT" >>"$dir/calls.log"; exit 0' INT
# One write per line: several stand-ins append to calls.log at once, and a line written in
# pieces gets another process's line spliced into it.
printf -v args ' [%s]' "$@"
printf 'start %s %s%s\n' "$name" "$$" "$args" >>"$dir/calls.log"
env >"$dir/env.$name.$$"
if [ -e "$dir/crash-$name" ]; then
  sleep 0.1
  exit 3
fi
while true; do sleep 0.05; done
"""

# As root the entrypoint runs munged through `runuser -u munge --`: the stand-in drops to nothing.
RUNUSER = r"""#!/bin/bash
dir=$(dirname "$0")
echo "runuser $*" >>"$dir/calls.log"
while [ "$1" != "--" ]; do shift; done
shift
exec "$@"
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kernel_state(pid: int) -> str:
    """Where a process is as the kernel sees it (state, the wait channel, the syscall it is in,
    signals pending and caught), for a supervisor that stopped answering."""
    parts = []
    for name in ("stat", "wchan", "syscall", "status"):
        try:
            text = Path(f"/proc/{pid}/{name}").read_text()
        except OSError as exc:
            parts.append(f"{name}: {exc.strerror}")
            continue
        if name == "status":
            text = " ".join(line for line in text.splitlines() if line.startswith(("State", "Sig", "Shd")))
        parts.append(f"{name}: {text.strip()}")
    return "; ".join(parts)


class Pod:
    def __init__(self, root: Path, proc: ManagedProcess) -> None:
        self.root = root
        self.proc = proc

    def calls(self) -> list[str]:
        path = self.root / "bin" / "calls.log"
        return path.read_text().splitlines() if path.exists() else []

    def started(self, name: str) -> list[str]:
        return [c for c in self.calls() if c.startswith(f"start {name} ")]

    def running(self) -> set[str]:
        """Stand-ins whose latest process is alive (the supervisor reaps the dead ones)."""
        latest: dict[str, int] = {}
        for call in self.calls():
            parts = call.split()
            if parts[0] == "start":
                latest[parts[1]] = int(parts[2])
        return {name for name, pid in latest.items() if _alive(pid)}

    def pid_of(self, name: str) -> int:
        return int(self.started(name)[-1].split()[2])


@pytest.fixture
def start_pod(procs: ProcessManager, tmp_path: Path) -> Callable[..., Pod]:
    def start(launcher: tuple[str, ...] = (), **env: str) -> Pod:
        root = tmp_path / f"pod{len(procs.processes)}"
        bindir = root / "bin"
        bindir.mkdir(parents=True)
        for name in STANDINS:
            (bindir / name).write_text(STANDIN)
            (bindir / name).chmod(0o755)
        (bindir / "runuser").write_text(RUNUSER)
        (bindir / "runuser").chmod(0o755)
        full_env = {
            "PATH": f"{bindir}:/usr/bin:/bin",
            "HOME": str(root),
            "WATCHDOG_MUNGE_KEY_PATH": str(root / "etc" / "munge.key"),
            "SLURM_CONF": str(root / "etc" / "slurm.conf"),
            "WATCHDOG_MUNGE_RUN_DIR": str(root / "run" / "munge"),
            "WATCHDOG_POLL_INTERVAL": "0.1",
            "WATCHDOG_BACKOFF_INITIAL": "1",
            "WATCHDOG_BACKOFF_MAX": "2",
            "WATCHDOG_STOP_TIMEOUT": "5",
            "WATCHDOG_NODE_NAME": "gw-test",
            **env,
        }
        proc = procs.start("entrypoint", [*launcher, "bash", str(ENTRYPOINT)], env=full_env)
        return Pod(root, proc)

    return start


def wait_running(pod: Pod, names: set[str], timeout: float = 30) -> None:
    wait_until(lambda: names <= pod.running(), timeout, what=f"{sorted(names)} to run; calls: {pod.calls()}")


def test_head_starts_its_services_and_stops_cleanly_on_sigterm(start_pod: Callable[..., Pod]) -> None:
    pod = start_pod(WATCHDOG_ROLE="head", MUNGE_KEY=MUNGE_KEY_B64, VLLM_MODEL="Qwen/Qwen2.5-7B-Instruct")
    wanted = {"munged", "slurmctld", "gpu-exporter", "slurm-exporter", "vllm"}
    wait_running(pod, wanted)
    assert "slurmd" not in pod.running() and "sshd" not in pod.running()

    key_path = pod.root / "etc" / "munge.key"
    assert key_path.read_bytes() == MUNGE_KEY
    assert oct(key_path.stat().st_mode & 0o777) == "0o400"
    conf = (pod.root / "etc" / "slurm.conf").read_text()  # bootstrap config: configless
    assert "SlurmctldParameters=enable_configless" in conf and "SlurmctldHost=gw-test" in conf

    (vllm,) = pod.started("vllm")
    assert "[serve] [Qwen/Qwen2.5-7B-Instruct]" in vllm
    assert "[--enable-auto-tool-choice] [--tool-call-parser] [hermes]" in vllm
    assert f"[-f] [{pod.root}/etc/slurm.conf]" in pod.started("slurmctld")[0]
    assert any(c.startswith("runuser -u munge -- munged -F") for c in pod.calls())

    # The key reaches no child: not in argv, not in any environment, not in the log.
    for env_file in (pod.root / "bin").glob("env.*"):
        text = env_file.read_text()
        assert "MUNGE_KEY=" not in text and MUNGE_KEY_B64 not in text, env_file.name
    assert MUNGE_KEY_B64 not in "\n".join(pod.calls())
    assert MUNGE_KEY_B64 not in pod.proc.log_tail()

    pod.proc.popen.send_signal(signal.SIGTERM)
    assert pod.proc.popen.wait(30) == 0
    signalled = {c.split()[1] for c in pod.calls() if c.startswith("signal ") and c.endswith(" TERM")}
    assert signalled == wanted


def test_worker_runs_configless_slurmd_and_forwards_sigint(start_pod: Callable[..., Pod], tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(MUNGE_KEY)
    pod = start_pod(
        WATCHDOG_ROLE="worker",
        WATCHDOG_HEAD_ADDR="abc123.runpod.internal",
        MUNGE_KEY_FILE=str(key_file),
        WATCHDOG_SLURMD_DYNAMIC="1",
        RUNPOD_GPU_COUNT="2",
    )
    wait_running(pod, {"munged", "slurmd", "gpu-exporter"})
    assert pod.running() == {"munged", "slurmd", "gpu-exporter"}
    (slurmd,) = pod.started("slurmd")
    assert "[-D] [--conf-server] [abc123.runpod.internal:6817] [-N] [gw-test] [-Z] [--conf] [Gres=gpu:2]" in slurmd
    assert (pod.root / "etc" / "munge.key").read_bytes() == MUNGE_KEY
    assert not (pod.root / "etc" / "slurm.conf").exists()  # workers fetch it (configless)

    pod.proc.popen.send_signal(signal.SIGINT)
    assert pod.proc.popen.wait(30) == 0
    signalled = {c.split()[1] for c in pod.calls() if c.startswith("signal ") and c.endswith(" INT")}
    assert signalled == {"munged", "slurmd", "gpu-exporter"}


def test_every_key_of_a_multi_line_public_key_is_authorized_once(start_pod: Callable[..., Pod], tmp_path: Path) -> None:
    operator, head = "ssh-ed25519 AAAAoperator op@laptop", "ssh-ed25519 AAAAhead gpu-watchdog-actions"
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    (ssh_dir / "authorized_keys").write_text(operator + "\n")  # a resumed pod's volume has it already
    pod = start_pod(
        WATCHDOG_ROLE="worker",
        WATCHDOG_HEAD_ADDR="head",
        MUNGE_KEY=MUNGE_KEY_B64,
        WATCHDOG_SSH_DIR=str(ssh_dir),
        PUBLIC_KEY=f"{operator}\n{head}\n",
    )
    wait_running(pod, {"sshd"})
    assert (ssh_dir / "authorized_keys").read_text().splitlines() == [operator, head]
    pod.proc.popen.send_signal(signal.SIGTERM)
    assert pod.proc.popen.wait(30) == 0


def test_crashed_child_is_restarted_with_backoff_and_sighup_restarts_all(start_pod: Callable[..., Pod]) -> None:
    pod = start_pod(WATCHDOG_ROLE="worker", WATCHDOG_HEAD_ADDR="head", MUNGE_KEY=MUNGE_KEY_B64)
    wait_running(pod, {"munged", "slurmd", "gpu-exporter"})
    first_munged = pod.pid_of("munged")

    crash = pod.root / "bin" / "crash-slurmd"
    crash.touch()  # every new slurmd dies at once: the supervisor keeps trying, slower
    os.kill(pod.pid_of("slurmd"), signal.SIGKILL)
    wait_until(lambda: len(pod.started("slurmd")) >= 4, 15, what="slurmd restarts")
    crash.unlink()
    wait_until(lambda: "slurmd" in pod.running(), 10, what="slurmd back")
    log = pod.proc.log_tail()
    assert "service=slurmd" in log and "restart_in_s=1" in log and "restart_in_s=2" in log
    assert pod.pid_of("munged") == first_munged  # the others were left alone

    os.kill(pod.proc.pid, signal.SIGHUP)
    # 30 s: each child stops on TERM within 0.1 s and restarts at once, but a loaded CI machine
    # once took over 10 s; the calls show which child was late.
    try:
        wait_until(lambda: pod.pid_of("munged") != first_munged and len(pod.running()) == 3, 30, what="reload")
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}; supervisor: {kernel_state(pod.proc.pid)}; running {sorted(pod.running())}; "
            f"calls: {pod.calls()[-12:]}; log: {pod.proc.log_tail(3000)}"
        ) from exc
    assert pod.proc.alive()
    pod.proc.popen.send_signal(signal.SIGTERM)
    assert pod.proc.popen.wait(30) == 0


def test_signals_work_when_started_with_them_ignored(start_pod: Callable[..., Pod]) -> None:
    """Under nohup (SIGHUP ignored) or as a script's background job (SIGINT ignored), bash could
    not trap them: the entrypoint starts again with them at their defaults."""
    pod = start_pod(
        launcher=("/usr/bin/env", "--ignore-signal=HUP,INT"),
        WATCHDOG_ROLE="worker",
        WATCHDOG_HEAD_ADDR="head",
        MUNGE_KEY=MUNGE_KEY_B64,
    )
    wait_running(pod, {"munged", "slurmd", "gpu-exporter"})
    first_munged = pod.pid_of("munged")
    ignored = int(re.search(r"SigIgn:\s*(\S+)", Path(f"/proc/{pod.proc.pid}/status").read_text()).group(1), 16)
    assert ignored & (1 << (signal.SIGHUP - 1) | 1 << (signal.SIGINT - 1)) == 0, kernel_state(pod.proc.pid)

    os.kill(pod.proc.pid, signal.SIGHUP)
    wait_until(lambda: pod.pid_of("munged") != first_munged and len(pod.running()) == 3, 30, what="reload")
    os.kill(pod.proc.pid, signal.SIGINT)
    assert pod.proc.popen.wait(30) == 0
    assert not pod.running()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "WATCHDOG_ROLE is not set"),
        ({"WATCHDOG_ROLE": "boss"}, "WATCHDOG_ROLE must be head or worker"),
        ({"WATCHDOG_ROLE": "worker", "MUNGE_KEY": MUNGE_KEY_B64}, "WATCHDOG_HEAD_ADDR is not set"),
        ({"WATCHDOG_ROLE": "head"}, "no munge key"),
        ({"WATCHDOG_ROLE": "head", "MUNGE_KEY": "!!not base64!!"}, "MUNGE_KEY is not valid base64"),
        ({"WATCHDOG_ROLE": "head", "MUNGE_KEY": base64.b64encode(b"short").decode()}, "shorter than 32 bytes"),
        ({"WATCHDOG_ROLE": "head", "MUNGE_KEY_FILE": "/nonexistent"}, "is not a readable file"),
        (
            {"WATCHDOG_ROLE": "head", "MUNGE_KEY": MUNGE_KEY_B64, "WATCHDOG_SERVICES": "munged,cron"},
            "unknown service 'cron'",
        ),
    ],
)
def test_refuses_to_start_without_required_env(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        ["bash", str(ENTRYPOINT)],
        env={
            "PATH": "/usr/bin:/bin",
            "WATCHDOG_MUNGE_KEY_PATH": str(tmp_path / "munge.key"),
            "SLURM_CONF": str(tmp_path / "slurm.conf"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "!!not base64!!" not in result.stderr
    assert not (tmp_path / "munge.key").exists()


def test_entrypoint_is_shellcheck_clean() -> None:
    result = subprocess.run(["shellcheck", "--severity=style", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dockerfile_builds_from_what_the_repository_has() -> None:
    # Static checks beside the real build (tests/cluster): every COPY source exists and
    # survives the .dockerignore, the base is pinned, apt leaves no lists, exec-form entrypoint.
    text = (REPO / "pod-image" / "Dockerfile").read_text()
    ignore = (REPO / "pod-image" / "Dockerfile.dockerignore").read_text().split()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") in kept, f"{source} is excluded by Dockerfile.dockerignore"
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and base.group(1).startswith("nvidia/cuda:") and "runtime" in base.group(1)
    assert ":latest" not in base.group(1)
    assert "--no-install-recommends" in text and "rm -rf /var/lib/apt/lists/*" in text
    for package in ("munge", "slurmctld", "slurmd", "tini", "openssh-server"):
        assert re.search(rf"\b{package}\b", text), package
    assert 'if [ "${WITH_VLLM}" = "true" ]' in text
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", .*"/usr/local/bin/gpu-watchdog-entrypoint"\]$', text, re.M)
    assert "COPY pod-image/entrypoint.sh /usr/local/bin/gpu-watchdog-entrypoint" in text
