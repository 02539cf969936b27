#!/usr/bin/env python3
"""`make cluster-up` / `cluster-down` / `cluster-status`: a head pod and N GPU worker pods on this
machine, provisioned and configured by the same playbooks as on RunPod.

    cluster.py up [--workers N] [--gpus G]    build the pod image, start the RunPod emulator,
                                              ansible-playbook provision.yml (pods + site.yml)
    cluster.py down                           teardown.yml, then remove whatever is left
    cluster.py status                         pods, their Slurm nodes and services

The RunPod emulator is the fake RunPod API (tests/fakes/runpod_api.py) with its container
backend: each pod is a podman container of the image built from pod-image/Dockerfile, on a
private bridge network where `<pod_id>.runpod.internal` resolves (global networking), with SSH
published on 127.0.0.1. Ansible talks to it exactly as to RunPod (the runpod_pod module, the
runpod inventory plugin, provision.yml, site.yml over SSH); only the API URLs differ, plus the
emulator's group variables (simulated GPUs, faster intervals) in .run/cluster/inventory/.

Written for other tools: .run/cluster/inventory.yml (a static Ansible inventory of the pods)
and .run/cluster/endpoints.json (prometheus, alertmanager, agent: URLs on 127.0.0.1;
agent_token_file; web_user and web_password_file for Prometheus and Alertmanager; head_ssh;
workers: [{name, slurm_node, ssh, pod_id, container}]).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts import pod_image  # noqa: E402
from tests.fakes.runpod_api import DEFAULT_API_KEY  # noqa: E402
from tests.fakes.runpod_pods import ContainerBackend  # noqa: E402

ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
# Pod names <prefix>-head / <prefix>-worker-N; containers and volumes <prefix>-pod-<id>.
DEFAULT_PREFIX = "gwc"
WORKER_GPU_TYPE = "NVIDIA H100 80GB HBM3"
HEAD_GPU_TYPE = "NVIDIA L4"
# Every pod: 1 vCPU and 3 GB as the API reports them (and the container's limits). The facts
# inside a container show this machine's cores and memory: slurm.conf must not use them.
POD_VCPUS = 1
POD_MEMORY_GB = 3
HEAD_HTTP_PORTS = {"prometheus": 9090, "alertmanager": 9093, "agent": 9095}
WEB_USER = "gw-admin"


class ClusterError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


class Cluster:
    """One emulated cluster; several can live side by side with different prefixes (tests)."""

    def __init__(self, state_dir: Path | None = None, prefix: str = DEFAULT_PREFIX, time_factor: float = 1.0) -> None:
        self.dir = (state_dir or REPO / ".run" / "cluster").resolve()
        self.prefix = prefix
        self.network = f"{prefix}-net"
        self.container_prefix = f"{prefix}-pod-"
        # > 1: Prometheus gets time-compressed copies of the rules and Alertmanager of its
        # timers (tests/harness/stack.py's compression), so alerts that wait minutes fire in seconds.
        self.time_factor = time_factor
        self.backend = ContainerBackend(network=self.network, prefix=self.container_prefix)

    # ----------------------------------------------------------------- paths

    @property
    def emulator_file(self) -> Path:
        return self.dir / "emulator.json"

    @property
    def ssh_key(self) -> Path:
        return self.dir / "ssh" / "id_ed25519"

    @property
    def inventory_dir(self) -> Path:
        return self.dir / "inventory"

    @property
    def files_dir(self) -> Path:
        """Files the group variables name, inside the inventory so that a copy of it (the head's,
        for its scale actions) finds them as "{{ inventory_dir }}/files/..."."""
        return self.inventory_dir / "files"

    @property
    def web_password_file(self) -> Path:
        return self.files_dir / "web-password"

    # ----------------------------------------------------------------- emulator

    def emulator(self) -> dict[str, Any] | None:
        """The running emulator's {pid, port, url}, or None."""
        try:
            info = json.loads(self.emulator_file.read_text())
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError):
            return None
        return info

    def start_emulator(self) -> dict[str, Any]:
        running = self.emulator()
        if running:
            return running
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log_file = (self.dir / "emulator.log").open("ab")
        argv = [
            sys.executable,
            "-m",
            "tests.fakes.runpod_api",
            "--port",
            str(port),
            "--state",
            str(self.dir / "runpod-state.json"),
            "--backend",
            "podman",
            "--pod-network",
            self.network,
            "--pod-prefix",
            self.container_prefix,
            "--pod-vcpus",
            str(POD_VCPUS),
            "--pod-memory-gb",
            str(POD_MEMORY_GB),
            "--start-delay",
            "0",
            "--pods-listen",
        ]
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log_file, stderr=log_file, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"the RunPod emulator exited ({proc.returncode}); see {self.dir}/emulator.log")
            try:
                urllib.request.urlopen(f"{url}/_state", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise ClusterError("the RunPod emulator did not answer within 30 s")
        # What the pods call RunPod's API (the head's agent and runpod-exporter): the bridge's gateway.
        pod_url = f"http://{self.backend.gateway()}:{port}"
        info = {"pid": proc.pid, "port": port, "url": url, "pod_url": pod_url}
        self.emulator_file.write_text(json.dumps(info))
        return info

    def stop_emulator(self) -> None:
        info = self.emulator()
        if info:
            os.kill(int(info["pid"]), signal.SIGTERM)
            for _ in range(50):
                try:
                    os.kill(int(info["pid"]), 0)
                except OSError:
                    break
                time.sleep(0.1)
        self.emulator_file.unlink(missing_ok=True)

    def api_state(self) -> dict[str, Any]:
        info = self.emulator()
        if not info:
            raise ClusterError("the RunPod emulator is not running: make cluster-up")
        with urllib.request.urlopen(f"{info['url']}/_state", timeout=30) as reply:
            return json.loads(reply.read())

    def control(self, changes: dict[str, Any]) -> dict[str, Any]:
        info = self.emulator()
        if not info:
            raise ClusterError("the RunPod emulator is not running: make cluster-up")
        request = urllib.request.Request(
            f"{info['url']}/_control",
            data=json.dumps(changes).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            return json.loads(reply.read())

    # ----------------------------------------------------------------- ansible

    def env(self) -> dict[str, str]:
        info = self.emulator()
        if not info:
            raise ClusterError("the RunPod emulator is not running")
        return {
            **os.environ,
            "RUNPOD_API_KEY": DEFAULT_API_KEY,
            "RUNPOD_API_BASE_URL": info["url"],
            "RUNPOD_REST_API_URL": f"{info['url']}/v1",
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_FORCE_COLOR": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def playbook(self, name: str, extra: dict[str, Any] | None = None, quiet: bool = False) -> str:
        """Run ansible-playbook NAME against the pods; its output streams unless quiet."""
        argv = [str(BIN / "ansible-playbook"), "-i", str(self.inventory_dir), name]
        argv += ["-e", f"@{self.dir / 'vars.yml'}", "--private-key", str(self.ssh_key)]
        if extra:
            argv += ["-e", json.dumps(extra)]
        proc = subprocess.Popen(
            argv, cwd=ANSIBLE_DIR, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if not quiet:
                sys.stdout.write(line)
                sys.stdout.flush()
        code = proc.wait()
        output = "".join(lines)
        (self.dir / f"last-{Path(name).stem}.log").write_text(output)
        if code != 0:
            tail = "" if not quiet else "\n" + output[-4000:]
            raise ClusterError(f"ansible-playbook {name} failed (exit {code}){tail}")
        return output

    def write_config(self, image: str, workers: int, gpus: int) -> None:
        self.files_dir.mkdir(parents=True, exist_ok=True)
        (self.inventory_dir / "group_vars").mkdir(exist_ok=True)
        ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        (self.inventory_dir / "cluster.runpod.yml").write_text(
            yaml.safe_dump(
                {
                    "plugin": "runpod",
                    "name_prefix": f"{self.prefix}-",
                    # Loopback ports of containers this machine made: no key to remember.
                    "ssh_common_args": ssh_args,
                }
            )
        )
        if not self.web_password_file.exists():
            self.web_password_file.write_text(secrets.token_urlsafe(18))
            self.web_password_file.chmod(0o600)
        password = "{{ lookup('file', inventory_dir ~ '/files/web-password') }}"  # noqa: S105 (a lookup)
        emulator = self.emulator() or {}
        settings = {
            "runpod_name_prefix": self.prefix,
            "runpod_image": image,
            "runpod_worker_gpu_type": WORKER_GPU_TYPE,
            "runpod_worker_gpu_count": gpus,
            "runpod_head_gpu_type": HEAD_GPU_TYPE,
            "runpod_head_gpu_count": 1,
            "runpod_head_ports": ["22/tcp", *(f"{port}/http" for port in HEAD_HTTP_PORTS.values())],
            "runpod_wait_timeout": 300,
            "runpod_poll_interval": 1,
            "scale_drain_poll": 2,
        }
        group_vars: dict[str, Any] = {
            "ansible_python_interpreter": "/usr/bin/python3",
            # The emulator's GPUs are simulated: gpu-exporter --backend sim, stand-in GRES
            # files (plain files: a pod cannot mknod), kept on the pod's volume.
            "slurm_node_gpu_sim": True,
            "slurm_head_sim_gpu_device_prefix": "/opt/gpu-watchdog/sim/gpu",
            # Faster than the defaults (15 s) so a fault becomes a finding within seconds.
            "prometheus_scrape_interval": "5s",
            "prometheus_evaluation_interval": "5s",
            "prometheus_alert_resend_delay": "5s",
            "exporters_gpu_interval": 2,
            "exporters_slurm_interval": 5,
            # SlurmdTimeout: a cut worker is NOT_RESPONDING within a minute, not five.
            "slurm_head_slurmd_timeout": 30,
            # The head's web UIs are published (the emulator's stand-in for RunPod's proxy):
            # basic auth on Prometheus and Alertmanager.
            "prometheus_web_users": {WEB_USER: password},
            "alertmanager_web_users": {WEB_USER: password},
            # runpod-exporter on the head (RunPodPodIdle and the cost rules), and the agent set
            # up to run scale.yml itself (actions stay off until agent_webhook_config enables
            # them): both reach the emulator at the bridge's gateway, as pods reach RunPod.
            "exporters_runpod_api_key": DEFAULT_API_KEY,
            "exporters_runpod_api_url": emulator.get("pod_url", ""),
            "exporters_runpod_interval": 5,
            "agent_webhook_actions_controller": True,
            "agent_webhook_runpod_api_key": DEFAULT_API_KEY,
            "agent_webhook_runpod_api_url": emulator.get("pod_url", ""),
            "agent_webhook_runpod_rest_api_url": f"{emulator.get('pod_url', '')}/v1",
            "agent_webhook_actions_extra_vars": settings,
            "agent_webhook_actions_inventory": {
                "plugin": "runpod",
                "name_prefix": f"{self.prefix}-",
                "ssh_common_args": ssh_args,
                "compose": {"ansible_host": "gpu_watchdog_scrape_host", "ansible_port": "22"},
            },
        }
        if self.time_factor > 1:
            group_vars.update(self._compressed_config())
        (self.inventory_dir / "group_vars" / "all.yml").write_text(yaml.safe_dump(group_vars, sort_keys=True))
        pubkey = (self.ssh_key.with_suffix(".pub")).read_text().strip()
        settings.update(runpod_workers=workers, runpod_ssh_public_key=pubkey)
        (self.dir / "vars.yml").write_text(yaml.safe_dump(settings, sort_keys=True))

    def _compressed_config(self) -> dict[str, Any]:
        """Time-compressed copies of the rules and of Alertmanager's timers, for the roles to deploy."""
        from scripts.time_compression import compressed_alertmanager_config, compressed_rule_files

        compressed_rule_files(self.files_dir / "rules", factor=self.time_factor)
        # The role points the agent receiver at the agent itself: only the timers matter here.
        config = compressed_alertmanager_config("http://agent.invalid", Path("/nonexistent"), factor=self.time_factor)
        (self.files_dir / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        return {
            "prometheus_rules_src_dir": "{{ inventory_dir }}/files/rules",
            "alertmanager_config_src": "{{ inventory_dir }}/files/alertmanager.yml",
        }

    def ensure_ssh_key(self) -> None:
        if self.ssh_key.exists():
            return
        self.ssh_key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpu-watchdog-cluster", "-f", str(self.ssh_key)],
            check=True,
        )

    # ----------------------------------------------------------------- what runs

    def pods(self) -> list[dict[str, Any]]:
        return [p for p in self.api_state()["pods"] if str(p["name"]).startswith(f"{self.prefix}-")]

    def describe(self) -> dict[str, Any]:
        pods = {p["name"]: p for p in self.pods()}
        head = pods.get(f"{self.prefix}-head")
        if head is None:
            raise ClusterError(f"no {self.prefix}-head pod: make cluster-up")

        def ssh_of(pod: dict[str, Any]) -> dict[str, Any] | None:
            for entry in (pod.get("runtime") or {}).get("ports") or []:
                if entry["privatePort"] == 22 and entry["isIpPublic"]:
                    return {"host": "127.0.0.1", "port": entry["publicPort"], "user": "root"}
            return None

        local = head["_fake"]["local_ports"]
        endpoints: dict[str, Any] = {
            name: f"http://127.0.0.1:{local[f'{port}/http']}" if f"{port}/http" in local else None
            for name, port in HEAD_HTTP_PORTS.items()
        }
        endpoints.update(
            agent_token_file=str(self.dir / "agent-token"),
            web_user=WEB_USER,
            web_password_file=str(self.web_password_file),
            ssh_key=str(self.ssh_key),
            head_ssh=ssh_of(head),
            head={"name": head["name"], "pod_id": head["id"], "container": f"{self.container_prefix}{head['id']}"},
            workers=[
                {
                    "name": pod["name"],
                    "slurm_node": pod["name"],
                    "ssh": ssh_of(pod),
                    "pod_id": pod["id"],
                    "container": f"{self.container_prefix}{pod['id']}",
                    "status": pod["desiredStatus"],
                }
                for name, pod in sorted(pods.items())
                if name.startswith(f"{self.prefix}-worker-")
            ],
        )
        return endpoints

    def write_outputs(self) -> dict[str, Any]:
        endpoints = self.describe()
        # The agent's token, readable here (root) so tools can query /findings.
        token = self.backend.exec(
            {"id": endpoints["head"]["pod_id"]}, ["cat", "/opt/gpu-watchdog/secrets/agent-token"]
        ).stdout.strip()
        token_file = Path(endpoints["agent_token_file"])
        if token:
            token_file.write_text(token)
            token_file.chmod(0o600)
        (self.dir / "endpoints.json").write_text(json.dumps(endpoints, indent=2) + "\n")
        listing = subprocess.run(
            [str(BIN / "ansible-inventory"), "-i", str(self.inventory_dir), "--list"],
            cwd=ANSIBLE_DIR,
            env=self.env(),
            check=True,
            capture_output=True,
            text=True,
        )
        self._write_static_inventory(json.loads(listing.stdout))
        return endpoints

    def _write_static_inventory(self, listing: dict[str, Any]) -> None:
        hostvars = listing.get("_meta", {}).get("hostvars", {})
        keep = ("ansible_host", "ansible_port", "ansible_user", "ansible_ssh_common_args")
        children: dict[str, Any] = {}
        for group in ("slurm_head", "slurm_workers", "monitoring"):
            hosts = listing.get(group, {}).get("hosts", [])
            children[group] = {"hosts": {h: {k: hostvars[h][k] for k in keep if k in hostvars[h]} for h in hosts}}
        inventory = {
            "all": {
                "vars": {
                    "ansible_ssh_private_key_file": str(self.ssh_key),
                    "ansible_python_interpreter": "/usr/bin/python3",
                },
                "children": children,
            }
        }
        text = "# Written by `make cluster-up`: the emulated pods, for `ansible -i .run/cluster/inventory.yml`.\n"
        (self.dir / "inventory.yml").write_text(text + yaml.safe_dump(inventory, sort_keys=False))

    # ----------------------------------------------------------------- commands

    def up(self, workers: int = 2, gpus: int = 4) -> dict[str, Any]:
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        log("building the pod image (skipped when unchanged)")
        image = pod_image.build()
        self.ensure_ssh_key()
        emulator = self.start_emulator()
        log(f"RunPod emulator at {emulator['url']} (pods are podman containers on network {self.network})")
        self.write_config(image, workers, gpus)
        log(f"provisioning {self.prefix}-head + {workers} worker(s) with ansible-playbook provision.yml")
        self.playbook("provision.yml")
        endpoints = self.write_outputs()
        elapsed = time.monotonic() - started
        self.print_summary(endpoints, elapsed)
        return endpoints

    def print_summary(self, endpoints: dict[str, Any], elapsed: float | None = None) -> None:
        took = f" in {elapsed:.0f} s" if elapsed is not None else ""
        print(f"\ngpu-watchdog cluster up{took}: {self.prefix}-head + {len(endpoints['workers'])} GPU worker pod(s)")
        for name in HEAD_HTTP_PORTS:
            print(f"  {name:<13} {endpoints[name]}")
        print(f"  web login     {WEB_USER} / password in {self.web_password_file}")
        ssh = endpoints["head_ssh"]
        print(f"  head ssh      ssh -i {self.ssh_key} -p {ssh['port']} root@127.0.0.1")
        for worker in endpoints["workers"]:
            w_ssh = worker["ssh"] or {}
            print(f"  {worker['name']:<13} ssh -p {w_ssh.get('port', '-')}  podman exec -it {worker['container']} bash")
        print(f"\n  inventory     {self.dir / 'inventory.yml'}")
        print(f"  endpoints     {self.dir / 'endpoints.json'}")
        first = endpoints["workers"][0]["container"] if endpoints["workers"] else "<worker container>"
        print("\nNext:")
        print(f"  podman exec {endpoints['head']['container']} sinfo")
        print(f"  podman exec {first} gpu-watchdog sim inject --gpu 1 xid 79")
        print(f"  podman exec {endpoints['head']['container']} gpu-watchdog findings")
        print("  make cluster-status; make cluster-down")

    def down(self) -> None:
        if self.emulator() and (self.dir / "vars.yml").exists():
            log("terminating the pods with ansible-playbook teardown.yml")
            try:
                self.playbook("teardown.yml", quiet=True)
            except ClusterError as exc:
                log(f"teardown.yml failed ({exc}); removing the containers directly")
        self.stop_emulator()
        removed = self.backend.remove_all()
        if removed:
            log(f"removed leftover containers: {', '.join(removed)}")
        for name in ("runpod-state.json", "endpoints.json", "inventory.yml", "agent-token"):
            (self.dir / name).unlink(missing_ok=True)
        log("cluster down")

    def status(self) -> int:
        if not self.emulator():
            print("cluster: not running (make cluster-up)")
            return 3
        pods = self.pods()
        print(f"RunPod emulator: {self.emulator()['url']}  pods: {len(pods)}")
        for pod in sorted(pods, key=lambda p: p["name"]):
            up = "up" if pod.get("runtime") else "no runtime"
            print(f"  {pod['name']:<14} {pod['id']}  {pod['desiredStatus']:<9} {up}")
            if pod.get("runtime"):
                services = self.backend.exec(
                    pod, ["python3", "/usr/local/bin/gw-supervise", "--run-dir", "/opt/gpu-watchdog/run", "status"]
                )
                for line in services.stdout.splitlines():
                    row = json.loads(line)
                    print(f"      {row['name']:<15} {'running' if row['running'] else 'STOPPED'}")
        head = next((p for p in pods if p["name"] == f"{self.prefix}-head" and p.get("runtime")), None)
        if head:
            sinfo = self.backend.exec(head, ["sinfo", "--Node", "--long"])
            print(sinfo.stdout.rstrip() or sinfo.stderr.rstrip())
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=None, help="where the cluster's files go [.run/cluster]")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="pod name prefix (a second cluster needs another)")
    parser.add_argument(
        "--time-factor",
        type=float,
        default=1.0,
        help="divide the rules' and Alertmanager's durations by this (tests: 12, a minute becomes 5 s)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="provision and configure the cluster")
    p_up.add_argument("--workers", type=int, default=2)
    p_up.add_argument("--gpus", type=int, default=4, help="simulated GPUs per worker")
    sub.add_parser("down", help="tear the cluster down (safe to re-run)")
    sub.add_parser("status", help="pods, services and Slurm nodes")
    args = parser.parse_args(argv)
    cluster = Cluster(args.state_dir, prefix=args.prefix, time_factor=args.time_factor)
    try:
        if args.command == "up":
            cluster.up(args.workers, args.gpus)
            return 0
        if args.command == "down":
            cluster.down()
            return 0
        return cluster.status()
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
