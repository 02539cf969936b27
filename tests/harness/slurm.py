"""A private, real Slurm cluster on this machine: munged, slurmctld and slurmd on free ports.

Everything is private to one cluster: its own munge key and socket, its own slurm.conf,
state/spool/pid/log paths under one temp dir and ports from :func:`free_port`, so several
engineers (or test sessions) can run clusters side by side without touching /etc/slurm or the
system munged. Daemons run in the foreground (``-D`` / ``-F``) under a :class:`ProcessManager`,
so the pids we stop are the daemons themselves.

Layout of the cluster (see ``write_config``): the real node ``socket.gethostname()`` runs
slurmd with ``Gres=gpu:h100:4`` backed by quiet character-device stand-ins; ``fake_nodes``
extra nodes have ``NodeAddr=127.0.0.2`` where nothing listens, so they go NOT_RESPONDING and
then DOWN after a short ``SlurmdTimeout``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.processes import ManagedProcess, ProcessManager, free_port, wait_until

REQUIRED_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "sdiag")


class SlurmUnavailable(RuntimeError):
    """A Debian package this harness needs is missing (`make test` installs munge and slurm-wlm)."""


def missing_binaries() -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    return [b for b in REQUIRED_BINARIES if shutil.which(b, path=search) is None]


def _which(name: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    found = shutil.which(name, path=search)
    if not found:
        raise SlurmUnavailable(f"{name} not found: install the Debian packages munge and slurm-wlm")
    return found


@dataclass
class SlurmCluster:
    """A running private cluster. `env` makes Slurm client commands talk to it."""

    root: Path
    conf: Path
    hostname: str
    fake_nodes: list[str]
    ctld_port: int
    slurmd_port: int
    procs: ProcessManager
    munged: ManagedProcess | None = None
    slurmctld: ManagedProcess | None = None
    slurmd: ManagedProcess | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        return [self.hostname, *self.fake_nodes]

    # -- client commands ----------------------------------------------------------------

    def run(self, argv: Sequence[str], timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster, e.g. ``run(["scontrol", "ping"])``."""
        argv = [_which(argv[0]), *argv[1:]]
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, *args: str, wrap: str = "sleep 600") -> str:
        """Submit a job; returns its job id (``--parsable``)."""
        out = self.run(["sbatch", "--parsable", "-o", "/dev/null", *args, "--wrap", wrap]).stdout.strip()
        return out.split(";")[0]

    def scontrol(self, *args: str, check: bool = True) -> str:
        return self.run(["scontrol", *args], check=check).stdout

    def cancel_all(self) -> None:
        self.run(["scancel", "--user", pwd.getpwuid(os.getuid()).pw_name], check=False)

    def ping(self) -> bool:
        try:
            return "UP" in self.run(["scontrol", "ping"], timeout=15, check=False).stdout
        except subprocess.TimeoutExpired:
            return False

    def node_state(self, node: str) -> str:
        out = self.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"]).stdout.split()
        return out[0] if out else ""

    # -- daemons ------------------------------------------------------------------------

    def start_controller(self, timeout: float = 60.0) -> None:
        self.slurmctld = self.procs.start(
            f"slurmctld-{self.ctld_port}", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], env=self.env
        )
        self.slurmctld.wait_ready(self.ping, timeout, what="slurmctld to answer scontrol ping")

    def stop_controller(self) -> None:
        if self.slurmctld is not None:
            self.slurmctld.stop()
            self.slurmctld = None

    def start_slurmd(self, timeout: float = 60.0) -> None:
        self.slurmd = self.procs.start(
            f"slurmd-{self.slurmd_port}",
            [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.hostname],
            env=self.env,
        )

        def node_up() -> bool:
            state = self.node_state(self.hostname)
            return bool(state) and not state.startswith(("unknown", "down", "inval")) and "*" not in state

        self.slurmd.wait_ready(node_up, timeout, what=f"node {self.hostname} to register")

    def stop(self) -> None:
        # Job scripts run in sessions of their own: cancel them while slurmd can still do it.
        if self.slurmctld is not None and self.slurmctld.alive():
            with contextlib.suppress(Exception):
                self.cancel_all()
                wait_until(
                    lambda: not self.run(["squeue", "-h", "-t", "running,completing"], timeout=10).stdout.strip(),
                    15,
                    interval=0.5,
                )
        for proc in (self.slurmd, self.slurmctld, self.munged):
            if proc is not None:
                proc.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _munge_owned(path: Path, mode: int) -> None:
    munge = pwd.getpwnam("munge")
    os.chown(path, munge.pw_uid, munge.pw_gid)
    os.chmod(path, mode)


def _munge_files(root: Path) -> tuple[Path, Path]:
    """A fresh munge key under ROOT/munge-key and the socket path under ROOT/munge (ROOT 0755)."""
    munge_dir, munge_keydir = root / "munge", root / "munge-key"
    munge_dir.mkdir()
    munge_keydir.mkdir()
    _munge_owned(munge_dir, 0o755)
    _munge_owned(munge_keydir, 0o700)
    key = munge_keydir / "munge.key"
    key.write_bytes(os.urandom(1024))
    _munge_owned(key, 0o400)
    return key, munge_dir / "munge.socket"


def start_munged(procs: ProcessManager, name: str, key: Path, munge_socket: Path) -> ManagedProcess:
    """A private munged (as user munge) with KEY, serving MUNGE_SOCKET; returns once the socket exists."""
    munge_dir, munge_keydir = munge_socket.parent, key.parent
    munged = procs.start(
        name,
        [
            # setpriv execs (runuser forks and lingers), so the pid we stop is munged's.
            _which("setpriv"),
            "--reuid=munge",
            "--regid=munge",
            "--init-groups",
            _which("munged"),
            "-F",
            f"--socket={munge_socket}",
            f"--key-file={key}",
            f"--pid-file={munge_dir / 'munged.pid'}",
            f"--log-file={munge_keydir / 'munged.log'}",
            f"--seed-file={munge_keydir / 'munged.seed'}",
        ],
    )
    munged.wait_ready(munge_socket.exists, 20, what="munged socket")
    return munged


def private_munge(procs: ProcessManager) -> tuple[Path, Path, ManagedProcess]:
    """A private munged in a new 0755 temp dir: (that dir, its socket, the process).

    For tests that run Slurm daemons some other way than :func:`start_cluster` (through the
    Ansible roles); slurm.conf uses it with ``AuthInfo=socket=SOCKET``.
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("a private munged needs root (it runs as the munge user)")
    missing = missing_binaries()
    if missing:
        raise SlurmUnavailable(f"missing {', '.join(missing)}: install the Debian packages munge and slurm-wlm")
    root = Path(tempfile.mkdtemp(prefix="gw-munge-"))
    os.chmod(root, 0o755)
    try:
        key, munge_socket = _munge_files(root)
        return root, munge_socket, start_munged(procs, f"munged-{root.name}", key, munge_socket)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def write_config(
    root: Path,
    hostname: str,
    ctld_port: int,
    slurmd_port: int,
    munge_socket: Path,
    fake_nodes: int,
    fake_port: int,
    slurmd_timeout: int,
    extra_conf: Mapping[str, str],
    zero_nodes: bool = False,
) -> tuple[Path, list[str]]:
    """slurm.conf and gres.conf for the cluster; returns (slurm.conf path, fake node names).

    `zero_nodes`: no node at all, the shape of ansible's slurm_head role for a head without
    workers (MaxNodeCount=1, a `gpu` partition with Nodes=ALL and nothing in it).
    """
    for sub in ("state", "spool", "log", "run", "dev"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # Quiet GPU stand-ins: slurmd wants character devices for File= (plain files log errors).
    for i in range(4):
        dev = root / "dev" / f"nvidia{i}"
        if not dev.exists():
            os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    fakes = [f"fake{i:04d}" for i in range(1, fake_nodes + 1)]
    settings: dict[str, str] = {
        "ClusterName": f"t{ctld_port}",
        "SlurmctldHost": f"{hostname}(127.0.0.1)",
        "SlurmctldPort": str(ctld_port),
        "SlurmdPort": str(slurmd_port),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={munge_socket}",
        "CredType": "cred/munge",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "MpiDefault": "none",
        "SchedulerType": "sched/backfill",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
        "GresTypes": "gpu",
        "StateSaveLocation": str(root / "state"),
        "SlurmdSpoolDir": str(root / "spool"),
        "SlurmctldLogFile": str(root / "log" / "slurmctld.log"),
        "SlurmdLogFile": str(root / "log" / "slurmd.log"),
        "SlurmctldPidFile": str(root / "run" / "slurmctld.pid"),
        "SlurmdPidFile": str(root / "run" / "slurmd.pid"),
        "ReturnToService": "2",
        "SlurmdTimeout": str(slurmd_timeout),
        "SlurmctldTimeout": "10",
        "MessageTimeout": "5",
        "InactiveLimit": "0",
        "MinJobAge": "60",
        "KillWait": "2",
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "JobCompType": "jobcomp/none",
        "PriorityType": "priority/multifactor",
        "SlurmdParameters": "config_overrides",
    }
    if zero_nodes:
        settings["MaxNodeCount"] = "1"
    settings.update(extra_conf)
    lines = [f"{k}={v}" for k, v in settings.items()]
    conf = root / "slurm.conf"
    if zero_nodes:
        lines.append("PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        conf.write_text("\n".join(lines) + "\n")
        (root / "gres.conf").write_text("")
        return conf, []
    # 8 CPUs on a 2-core machine: config_overrides makes Slurm trust the config, so tests
    # can run several jobs side by side.
    lines.append(f"NodeName={hostname} NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 Gres=gpu:h100:4 State=UNKNOWN")
    if fakes:
        lines.append(
            # All of 127/8 reaches our slurmd (it listens on every address): a port where
            # nothing listens makes these nodes honestly unreachable.
            f"NodeName={_hostlist(fakes)} NodeAddr=127.0.0.2 Port={fake_port} CPUs=8 RealMemory=16000"
            " Gres=gpu:h100:4 State=UNKNOWN"
        )
    lines.append("PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    lines.append(f"PartitionName=debug Nodes={hostname} MaxTime=INFINITE State=UP")
    conf.write_text("\n".join(lines) + "\n")
    (root / "gres.conf").write_text(f"NodeName={hostname} Name=gpu Type=h100 File={root}/dev/nvidia[0-3]\n")
    return conf, fakes


def _hostlist(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return f"fake[{names[0][4:]}-{names[-1][4:]}]"


def start_cluster(
    procs: ProcessManager,
    *,
    fake_nodes: int = 2,
    slurmd_timeout: int = 10,
    with_slurmd: bool = True,
    extra_conf: Mapping[str, str] | None = None,
    zero_nodes: bool = False,
) -> SlurmCluster:
    """Start munged, slurmctld and (optionally) slurmd for a new private cluster.

    `zero_nodes`: a controller without any node (no slurmd; see :func:`write_config`).

    The caller owns `procs` (e.g. the `session_procs` fixture); call ``cluster.stop()`` to stop
    the daemons and remove the cluster's directory.
    """
    missing = missing_binaries()
    if missing:
        raise SlurmUnavailable(f"missing {', '.join(missing)}: install the Debian packages munge and slurm-wlm")
    if os.geteuid() != 0:
        raise SlurmUnavailable("a private Slurm cluster needs root (SlurmUser=root, munged as the munge user)")
    # Not under pytest's 0700 tmp dirs: munged (user munge) must reach its socket dir.
    root = Path(tempfile.mkdtemp(prefix="gw-slurm-"))
    os.chmod(root, 0o755)
    hostname = socket.gethostname()
    key, munge_socket = _munge_files(root)
    ctld_port, slurmd_port = free_port(), free_port()
    while slurmd_port == ctld_port:
        slurmd_port = free_port()
    conf, fakes = write_config(
        root,
        hostname,
        ctld_port,
        slurmd_port,
        munge_socket,
        0 if zero_nodes else fake_nodes,
        free_port(),
        slurmd_timeout,
        extra_conf or {},
        zero_nodes=zero_nodes,
    )
    env = dict(os.environ)
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin"])
    for var in [v for v in env if v.startswith(("SLURM_", "SQUEUE_", "SINFO_", "SBATCH_")) and v != "SLURM_CONF"]:
        del env[var]
    cluster = SlurmCluster(
        root=root,
        conf=conf,
        hostname=hostname,
        fake_nodes=fakes,
        ctld_port=ctld_port,
        slurmd_port=slurmd_port,
        procs=procs,
        env=env,
    )
    try:
        cluster.munged = start_munged(procs, f"munged-{ctld_port}", key, munge_socket)
        cluster.start_controller()
        if with_slurmd and not zero_nodes:
            cluster.start_slurmd()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_for_job_state(cluster: SlurmCluster, job_id: str, state: str, timeout: float = 60.0) -> None:
    def current() -> bool:
        out = cluster.run(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False).stdout.strip()
        return out == state

    wait_until(current, timeout, interval=0.5, what=f"job {job_id} to be {state}")


def wait_for_node_state(cluster: SlurmCluster, node: str, prefix: str, timeout: float = 90.0) -> None:
    wait_until(lambda: cluster.node_state(node).startswith(prefix), timeout, interval=1, what=f"{node} to be {prefix}")
