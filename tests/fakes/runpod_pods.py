"""Real pods for the fake RunPod API: each pod a podman container of the pod image.

`ContainerBackend` is what makes `tests/fakes/runpod_api.py` an emulator rather than a
bookkeeper: creating a pod runs a container from the pod's `imageName` on a private podman
bridge network; a pod created with global networking answers to `<pod_id>.runpod.internal`
there (aardvark-dns), as on RunPod; its ports are published on 127.0.0.1 (RunPod's public IP +
mapped port, and its HTTP proxy, both become loopback ports); vCPU and memory limits come from
the pod's spec; stop removes the container (its disk is lost) and keeps the volume, like RunPod;
resume starts a new container on the same volume; terminate removes both. A pod keeps its
private IP across stop/resume and a network cut (slurmctld caches the address it resolved for
a node; the emulator assumes RunPod keeps a pod's global-networking address, docs/runpod.md).

Containers need `--runtime runc` and explicit ulimits on these machines (scripts/pod_image.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=20000:20000"]
LABEL = "gpu-watchdog.emulator"


class BackendError(RuntimeError):
    """A container operation failed; the message is what the API answers with."""


def _podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], text=True, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise BackendError(f"podman {args[0]} failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return result


class ContainerBackend:
    """Pods as podman containers on one bridge network (created if missing)."""

    def __init__(self, network: str = "gw-runpod", prefix: str = "gwpod-", host_cpus: int | None = None) -> None:
        self.network = network
        self.prefix = prefix
        self.host_cpus = host_cpus or os.cpu_count() or 1

    # ----------------------------------------------------------------- names

    def container(self, pod: dict[str, Any]) -> str:
        return f"{self.prefix}{pod['id']}"

    def volume(self, pod: dict[str, Any]) -> str:
        return f"{self.prefix}{pod['id']}-volume"

    @staticmethod
    def alias(pod: dict[str, Any]) -> str:
        return f"{pod['id']}.runpod.internal"

    # ----------------------------------------------------------------- lifecycle

    def ensure_network(self) -> None:
        if _podman("network", "exists", self.network, check=False).returncode != 0:
            _podman("network", "create", "--label", LABEL, self.network)

    def gateway(self) -> str:
        """The bridge's address on this machine (what the pods route to), creating the network."""
        self.ensure_network()
        info = json.loads(_podman("network", "inspect", self.network).stdout)
        return str(info[0]["subnets"][0]["gateway"])

    def start(self, pod: dict[str, Any]) -> list[dict[str, Any]]:
        """Run the pod's container (a fresh one: a resumed pod's disk starts from the image)."""
        self.ensure_network()
        name = self.container(pod)
        _podman("rm", "--force", "--time", "0", name, check=False)
        env = {
            **{e["key"]: e["value"] for e in pod["env"]},
            "RUNPOD_POD_ID": pod["id"],
            "RUNPOD_GPU_COUNT": str(pod["gpuCount"]),
            "RUNPOD_CPU_COUNT": str(pod["vcpuCount"]),
            "RUNPOD_MEM_GB": str(pod["memoryInGb"]),
        }
        args = [
            "run",
            "--detach",
            "--name",
            name,
            "--hostname",
            pod["id"],
            *RUN_FLAGS,
            "--network",
            self.network,
            *(["--network-alias", self.alias(pod)] if pod.get("globalNetworking") else []),
            *(["--ip", pod["ip"]] if pod.get("ip") else []),
            "--label",
            f"{LABEL}=1",
            "--label",
            f"{LABEL}.pod={pod['id']}",
            "--cpus",
            str(min(float(pod["vcpuCount"]), float(self.host_cpus))),
            "--memory",
            f"{int(pod['memoryInGb'])}g",
        ]
        if int(pod.get("volumeInGb") or 0) > 0:
            args += ["--volume", f"{self.volume(pod)}:{pod['volumeMountPath']}"]
        for key, value in sorted(env.items()):
            args += ["--env", f"{key}={value}"]
        for spec in filter(None, str(pod["ports"]).split(",")):
            port = spec.partition("/")[0]
            args += ["--publish", f"127.0.0.1::{port}"]
        args.append(pod["imageName"])
        _podman(*args)
        pod["ip"] = self.address(pod)
        return self.portmap(pod)

    def portmap(self, pod: dict[str, Any]) -> list[dict[str, Any]]:
        """RunPod's runtime.ports: TCP ports public (here 127.0.0.1:mapped), HTTP ports private
        with the loopback port RunPod's proxy would be (`localPort`, the emulator's addition)."""
        name = self.container(pod)
        published: dict[int, int] = {}
        for line in _podman("port", name).stdout.splitlines():
            # "22/tcp -> 127.0.0.1:40123"
            left, _, right = line.partition(" -> ")
            if right:
                published[int(left.partition("/")[0])] = int(right.rpartition(":")[2])
        private_ip = self.address(pod)
        entries: list[dict[str, Any]] = []
        for spec in filter(None, str(pod["ports"]).split(",")):
            port_text, _, kind = spec.partition("/")
            port = int(port_text)
            local = published.get(port)
            if kind == "tcp":
                entries.append({"ip": "", "isIpPublic": True, "privatePort": port, "publicPort": local, "type": "tcp"})
            entries.append(
                {
                    "ip": private_ip,
                    "isIpPublic": False,
                    "privatePort": port,
                    "publicPort": port,
                    "type": kind or "tcp",
                    "localPort": local,
                }
            )
        return entries

    def address(self, pod: dict[str, Any]) -> str:
        info = self._inspect(pod)
        networks = (info or {}).get("NetworkSettings", {}).get("Networks", {}) or {}
        return str((networks.get(self.network) or {}).get("IPAddress") or "")

    def running(self, pod: dict[str, Any]) -> bool:
        info = self._inspect(pod)
        return bool(info and info.get("State", {}).get("Running"))

    def stop(self, pod: dict[str, Any]) -> None:
        _podman("rm", "--force", "--time", "10", self.container(pod), check=False)

    def remove(self, pod: dict[str, Any]) -> None:
        self.stop(pod)
        _podman("volume", "rm", "--force", self.volume(pod), check=False)

    def disconnect(self, pod: dict[str, Any]) -> None:
        """Cut the pod off the network (its published ports go with it, as on a real cut)."""
        _podman("network", "disconnect", self.network, self.container(pod))

    def reconnect(self, pod: dict[str, Any]) -> None:
        args = ["network", "connect"]
        if pod.get("ip"):
            args += ["--ip", pod["ip"]]
        if pod.get("globalNetworking"):
            args += ["--alias", self.alias(pod)]
        _podman(*args, self.network, self.container(pod))

    def exec(self, pod: dict[str, Any], argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return _podman("exec", self.container(pod), *argv, check=False, timeout=timeout)

    def _inspect(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        result = _podman("container", "inspect", self.container(pod), check=False, timeout=30)
        if result.returncode != 0:
            return None
        data = json.loads(result.stdout or "[]")
        return data[0] if data else None

    def remove_all(self) -> list[str]:
        """Every container and volume this emulator made (any network), and the network."""
        names = _podman("ps", "--all", "--filter", f"label={LABEL}=1", "--format", "{{.Names}}").stdout.split()
        for name in names:
            _podman("rm", "--force", "--time", "5", name, check=False)
        listed = _podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
        volumes = [v for v in listed if v.startswith(self.prefix)]
        for volume in volumes:
            _podman("volume", "rm", "--force", volume, check=False)
        _podman("network", "rm", "--force", self.network, check=False)
        return names
