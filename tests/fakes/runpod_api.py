"""A local stand-in for RunPod's GraphQL API, faithful to what the `runpod` SDK (1.12) sends.

The real SDK talks to it through `RUNPOD_API_BASE_URL` (read on every call): every call is a
POST of `{"query": "..."}` to `/graphql` with `Authorization: Bearer <key>`, and arguments are
inlined in the query text, so operations are recognised by name and their `input: {...}`
object is parsed out of the text with a small GraphQL value parser.

Implemented: `gpuTypes` (all, or `input:{id}`), `podFindAndDeployOnDemand`, `pod(input:{podId})`,
`myself { pods }` (and the user's network volumes), `podStop`, `podResume`, `podTerminate`.
Pods go CREATED -> RUNNING after `start_delay` seconds; `runtime` is null until then, and then
lists the pod's ports (TCP ports mapped to public ports on `public_ip`). A GPU type can be
marked out of capacity (RunPod's exact error, as a GraphQL `errors` body with HTTP 200), a wrong
key gets HTTP 401, and failures can be injected per operation (rate limits, outages).

In-process (tests):

    server = FakeRunPod(api_keys=["rpa_TEST..."], start_delay=0.3).start()
    os.environ["RUNPOD_API_BASE_URL"] = server.url
    ...
    server.stop()

As a process (`procs.start(...)`), with state kept in a JSON file across restarts:

    python -m tests.fakes.runpod_api --port N --state FILE [--api-key K] [--start-delay S]

Control over HTTP: `POST /_control` with a JSON object (see `FakeRunPod.control`), `GET /_state`.

REST: `POST /v1/pods` is RunPod's REST create (`RUNPOD_REST_API_URL=<url>/v1`), the only way to
ask for `globalNetworking`; it is recorded as operation `restCreatePod`.

With `--backend podman` (`backend=ContainerBackend(...)`) pods are real containers of their
image (tests/fakes/runpod_pods.py): the emulator `make cluster-up` runs. Pods then report the
vCPUs and memory the containers are limited to (`--pod-vcpus`, `--pod-memory-gb`) and
`/_control` can cut a pod's network (`{"disconnect": POD_ID}`, `{"reconnect": POD_ID}`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import socket
import string
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web

from tests.fakes.runpod_pods import BackendError, ContainerBackend

IP_FREEBIND = 15  # linux/in.h; not exported by Python's socket module

CAPACITY_ERROR = (
    "There are no longer any instances available with the requested specifications. Please refresh and try again."
)
DEFAULT_API_KEY = "rpa_FAKEKEY0123456789ABCDEFGHIJ"

# id -> what `gpuTypes` reports. Prices per GPU-hour, as RunPod lists them.
DEFAULT_GPU_TYPES: dict[str, dict[str, Any]] = {
    "NVIDIA GeForce RTX 4090": {
        "displayName": "RTX 4090",
        "memoryInGb": 24,
        "securePrice": 0.69,
        "communityPrice": 0.34,
        "maxGpuCount": 8,
    },
    "NVIDIA A100 80GB PCIe": {
        "displayName": "A100 PCIe",
        "memoryInGb": 80,
        "securePrice": 1.64,
        "communityPrice": 1.19,
        "maxGpuCount": 8,
    },
    "NVIDIA H100 80GB HBM3": {
        "displayName": "H100 SXM",
        "memoryInGb": 80,
        "securePrice": 2.99,
        "communityPrice": 2.69,
        "maxGpuCount": 8,
    },
    "NVIDIA L4": {"displayName": "L4", "memoryInGb": 24, "securePrice": 0.43, "communityPrice": 0.28, "maxGpuCount": 8},
}

# Operation names as they appear in the SDK's query text. Order matters: `pod(` must not match
# `podStop(`, so every pattern requires the name to be followed by `(` or `{`.
_OPERATIONS: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(rf"\b{name}\s*\(" if name != "myself" else r"\bmyself\s*\{"))
    for name in ("podFindAndDeployOnDemand", "deployCpuPod", "podStop", "podResume", "podTerminate", "pod", "myself")
]
_GPU_TYPES = re.compile(r"\bgpuTypes\b")


class GraphQLSyntaxError(ValueError):
    pass


class _ValueParser:
    """Just enough of GraphQL's value grammar for the SDK's inlined arguments."""

    _NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
    _NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")
    _ESCAPES: ClassVar[dict[str, str]] = {
        '"': '"',
        "\\": "\\",
        "/": "/",
        "b": "\b",
        "f": "\f",
        "n": "\n",
        "r": "\r",
        "t": "\t",
    }

    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def _skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n,":
            self.pos += 1

    def _expect(self, char: str) -> None:
        self._skip()
        if self.text[self.pos : self.pos + 1] != char:
            found = self.text[self.pos : self.pos + 20]
            raise GraphQLSyntaxError(f"Syntax Error: Expected {char!r}, found {found!r}")
        self.pos += 1

    def _name(self) -> str:
        self._skip()
        match = self._NAME.match(self.text, self.pos)
        if not match:
            raise GraphQLSyntaxError(f"Syntax Error: Expected Name, found {self.text[self.pos : self.pos + 20]!r}")
        self.pos = match.end()
        return match.group(0)

    def _pairs(self, close: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while True:
            self._skip()
            if self.text[self.pos : self.pos + 1] == close:
                self.pos += 1
                return result
            key = self._name()
            self._expect(":")
            result[key] = self.value()

    def arguments(self) -> dict[str, Any]:
        self._expect("(")
        return self._pairs(")")

    def value(self) -> Any:
        self._skip()
        char = self.text[self.pos : self.pos + 1]
        if char == '"':
            return self._string()
        if char == "{":
            self.pos += 1
            return self._pairs("}")
        if char == "[":
            self.pos += 1
            items = []
            while True:
                self._skip()
                if self.text[self.pos : self.pos + 1] == "]":
                    self.pos += 1
                    return items
                items.append(self.value())
        if char == "$":
            raise GraphQLSyntaxError("variables are not supported by this fake (the SDK inlines arguments)")
        number = self._NUMBER.match(self.text, self.pos)
        if number:
            self.pos = number.end()
            return float(number.group(0)) if number.group(1) or number.group(2) else int(number.group(0))
        name = self._name()
        return {"true": True, "false": False, "null": None}.get(name, name)  # else: an enum value

    def _string(self) -> str:
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char == "\n":
                break
            if char == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt == "u":
                    out.append(chr(int(self.text[self.pos + 2 : self.pos + 6], 16)))
                    self.pos += 6
                    continue
                if nxt not in self._ESCAPES:
                    raise GraphQLSyntaxError(f"Syntax Error: Invalid character escape sequence: \\{nxt}")
                out.append(self._ESCAPES[nxt])
                self.pos += 2
                continue
            out.append(char)
            self.pos += 1
        raise GraphQLSyntaxError("Syntax Error: Unterminated string.")


def parse_arguments(query: str, operation: str) -> dict[str, Any]:
    """The arguments of `operation(...)` in `query`, e.g. {"input": {"podId": "abc"}}; {} if none."""
    match = re.search(rf"\b{operation}\s*\(", query)
    if not match:
        return {}
    return _ValueParser(query, match.end() - 1).arguments()


def _pod_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(14))


class FakeRunPod:
    """The fake API's state and handlers; `start()` serves it on a loopback port in a thread."""

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (DEFAULT_API_KEY,),
        start_delay: float = 0.5,
        public_ip: str = "127.0.0.1",
        gpu_types: dict[str, dict[str, Any]] | None = None,
        state_file: Path | None = None,
        backend: ContainerBackend | None = None,
        pod_vcpus: int | None = None,
        pod_memory_gb: int | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self.state_file = state_file
        self.backend = backend
        # Per pod: None keeps RunPod's usual shape (16 vCPUs and 62 GB per GPU).
        self.pod_vcpus = pod_vcpus
        self.pod_memory_gb = pod_memory_gb
        self.config: dict[str, Any] = {
            "api_keys": list(api_keys),
            "start_delay": float(start_delay),
            "public_ip": public_ip,
            "no_capacity": [],
            "network_volumes": [],
        }
        self.gpu_types: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (gpu_types or DEFAULT_GPU_TYPES).items()}
        self.pods_by_id: dict[str, dict[str, Any]] = {}
        self.terminated: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        # op -> [{"status": int, "message": str, "count": int}], consumed in order
        self.injected: dict[str, list[dict[str, Any]]] = {}
        self._next_public_port = 20000 + random.randrange(0, 20000, 100)
        if state_file and state_file.exists():
            self._load(state_file)
        self.url = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- persistence

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self.config.update(data.get("config", {}))
        self.gpu_types = data.get("gpu_types", self.gpu_types)
        self.pods_by_id = {p["id"]: p for p in data.get("pods", [])}
        self.terminated = data.get("terminated", [])
        self.requests = data.get("requests", [])
        self._next_public_port = data.get("next_public_port", self._next_public_port)

    def _save(self) -> None:
        if not self.state_file:
            return
        data = {
            "config": self.config,
            "gpu_types": self.gpu_types,
            "pods": list(self.pods_by_id.values()),
            "terminated": self.terminated,
            "requests": self.requests,
            "next_public_port": self._next_public_port,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.state_file)

    # ----------------------------------------------------------------- control (tests)

    def control(self, changes: dict[str, Any]) -> None:
        """Change behaviour. Keys: start_delay, public_ip, api_keys, capacity {gpu_id: bool},
        gpu_types {id: {...}}, network_volumes [...], inject {op, status, message, count, raw,
        headers} (`raw`: reply with this body instead of a GraphQL error; `headers`: e.g. Retry-After),
        pod_status {pod_id: desiredStatus}, clear_inject (drop pending injected failures),
        reset (drop every pod and the request log); with a container backend, disconnect /
        reconnect POD_ID (cut a pod's network and restore it)."""
        with self._lock:
            if changes.get("reset"):
                self.pods_by_id.clear()
                self.terminated.clear()
                self.requests.clear()
                self.injected.clear()
                self.config["no_capacity"] = []
            if changes.get("clear_inject"):
                self.injected.clear()
            for key in ("start_delay", "public_ip", "api_keys", "network_volumes"):
                if key in changes:
                    self.config[key] = changes[key]
            for gpu_id, available in changes.get("capacity", {}).items():
                missing = set(self.config["no_capacity"]) - {gpu_id}
                self.config["no_capacity"] = sorted(missing if available else missing | {gpu_id})
            self.gpu_types.update(changes.get("gpu_types", {}))
            if "inject" in changes:
                spec = dict(changes["inject"])
                self.injected.setdefault(spec.pop("op"), []).append(
                    {"status": 200, "message": "Something went wrong", "count": 1} | spec
                )
            for pod_id, status in changes.get("pod_status", {}).items():
                self._set_status(self.pods_by_id[pod_id], status)
            if self.backend is not None:
                if "disconnect" in changes:
                    self.backend.disconnect(self.pods_by_id[changes["disconnect"]])
                if "reconnect" in changes:
                    self.backend.reconnect(self.pods_by_id[changes["reconnect"]])
            self._save()

    def set_capacity(self, gpu_type: str, available: bool) -> None:
        self.control({"capacity": {gpu_type: available}})

    def pods(self) -> list[dict[str, Any]]:
        """Every live pod as the API reports it now."""
        with self._lock:
            return [self._view(p, internal=True) for p in self.pods_by_id.values()]

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "config": dict(self.config),
                "pods": [self._view(p, internal=True) for p in self.pods_by_id.values()],
                "terminated": list(self.terminated),
                "requests": list(self.requests),
            }

    def creations(self) -> int:
        """Pods created so far, through GraphQL or REST."""
        return sum(1 for op in self.operations() if op in ("podFindAndDeployOnDemand", "restCreatePod"))

    def operations(self) -> list[str]:
        """The operation names received so far, in order (without the auth failures)."""
        with self._lock:
            return [r["op"] for r in self.requests if r.get("authorized", True)]

    # ----------------------------------------------------------------- pod model

    def _set_status(self, pod: dict[str, Any], status: str) -> None:
        pod["target"] = status
        pod["lastStatusChange"] = time.time()
        if status == "RUNNING":
            pod["started_at"] = time.time()
            pod["start_delay"] = self.config["start_delay"]

    def _view(self, pod: dict[str, Any], internal: bool = False) -> dict[str, Any]:
        """What `pod`/`myself{pods}` return: desiredStatus per lifecycle, runtime only when up.

        `internal` adds a `_fake` key (what was asked for: GPU type id, cloud type, ...) that
        is not part of RunPod's schema, for tests reading `/_state`."""
        now = time.time()
        status = pod["target"]
        up = False
        if status == "RUNNING":
            if self.backend is not None:
                up = bool(pod.get("container_error") is None and self.backend.running(pod))
            else:
                up = now - pod["started_at"] >= pod["start_delay"]
            if not up:
                status = "CREATED" if pod.get("resumes", 0) == 0 else "RESTARTING"
        runtime = None
        if up:
            runtime = {
                "uptimeInSeconds": int(now - pod["started_at"] - pod["start_delay"]),
                "ports": [dict(p, ip=self.config["public_ip"]) if p["isIpPublic"] else dict(p) for p in pod["portmap"]],
                "gpus": [{"id": f"GPU-{pod['id']}-{i}", "gpuUtilPercent": 0} for i in range(pod["gpuCount"])],
            }
        view = {
            "id": pod["id"],
            "name": pod["name"],
            "containerDiskInGb": pod["containerDiskInGb"],
            "costPerHr": pod["costPerHr"],
            "desiredStatus": status,
            "dockerArgs": pod["dockerArgs"],
            "dockerId": None,
            "env": [f"{e['key']}={e['value']}" for e in pod["env"]],
            "gpuCount": pod["gpuCount"],
            "imageName": pod["imageName"],
            "lastStatusChange": time.strftime(
                "Rented by User: %a %b %d %Y %H:%M:%S GMT+0000", time.gmtime(pod["lastStatusChange"])
            ),
            "machineId": pod["machineId"],
            "memoryInGb": pod.get("memoryInGb", 62 * pod["gpuCount"]),
            "podType": "RESERVED",
            "port": None,
            "ports": pod["ports"],
            "uptimeSeconds": runtime["uptimeInSeconds"] if runtime else 0,
            "vcpuCount": pod.get("vcpuCount", 16 * pod["gpuCount"]),
            "volumeInGb": pod["volumeInGb"],
            "volumeMountPath": pod["volumeMountPath"],
            "runtime": runtime,
            "machine": {"gpuDisplayName": pod["gpuDisplayName"], "podHostId": f"{pod['id']}-64410b1c"},
        }
        if internal:
            view["_fake"] = {
                k: pod.get(k)
                for k in (
                    "gpuTypeId",
                    "cloudType",
                    "templateId",
                    "networkVolumeId",
                    "created_at",
                    "globalNetworking",
                    "container_error",
                )
            }
            # The loopback ports a pod's ports are published on (container backend).
            view["_fake"]["local_ports"] = {
                f"{p['privatePort']}/{p['type']}": p["localPort"] for p in pod["portmap"] if p.get("localPort")
            }
        return view

    def _portmap(self, ports: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for spec in filter(None, ports.split(",")):
            port_text, _, kind = spec.partition("/")
            port = int(port_text)
            if kind == "tcp":
                self._next_public_port += 1
                entries.append(
                    {
                        "ip": "",
                        "isIpPublic": True,
                        "privatePort": port,
                        "publicPort": self._next_public_port,
                        "type": "tcp",
                    }
                )
            entries.append(
                {"ip": "10.65.0.2", "isIpPublic": False, "privatePort": port, "publicPort": port, "type": kind or "tcp"}
            )
        return entries

    # ----------------------------------------------------------------- operations

    def _deploy(self, args: dict[str, Any], global_networking: bool = False) -> dict[str, Any]:
        spec = args.get("input") or {}
        for field in ("name", "gpuTypeId", "cloudType"):
            if field not in spec:
                raise _APIError(f'Field "{field}" of required type was not provided.', status=400)
        gpu_id = spec["gpuTypeId"]
        gpu = self.gpu_types.get(gpu_id)
        if gpu is None:
            raise _APIError("Something went wrong. Please try again later or contact support.")
        if gpu_id in self.config["no_capacity"]:
            raise _APIError(CAPACITY_ERROR)
        count = int(spec.get("gpuCount", 1))
        price = gpu["securePrice"] if spec["cloudType"] == "SECURE" else gpu["communityPrice"]
        pod_id = _pod_id()
        ports = str(spec.get("ports") or "")
        pod = {
            "id": pod_id,
            "name": spec["name"],
            "imageName": spec.get("imageName", ""),
            "gpuTypeId": gpu_id,
            "gpuDisplayName": gpu["displayName"],
            "gpuCount": count,
            "cloudType": spec["cloudType"],
            "costPerHr": round(price * count, 3),
            "volumeInGb": spec.get("volumeInGb", 0),
            "containerDiskInGb": spec.get("containerDiskInGb", 10),
            "volumeMountPath": spec.get("volumeMountPath", "/runpod-volume"),
            "dockerArgs": spec.get("dockerArgs", ""),
            "ports": ports,
            "env": list(spec.get("env") or []),
            "templateId": spec.get("templateId"),
            "networkVolumeId": spec.get("networkVolumeId"),
            "machineId": f"m{pod_id[:8]}",
            "portmap": self._portmap(ports),
            "resumes": 0,
            "created_at": time.time(),
            "globalNetworking": global_networking,
        }
        if self.pod_vcpus is not None:
            pod["vcpuCount"] = self.pod_vcpus
        if self.pod_memory_gb is not None:
            pod["memoryInGb"] = self.pod_memory_gb
        self._set_status(pod, "RUNNING")
        self.pods_by_id[pod_id] = pod
        self._start_container(pod)
        view = self._view(pod)
        return {k: view[k] for k in ("id", "imageName", "env", "machineId", "machine")}

    def _start_container(self, pod: dict[str, Any]) -> None:
        """With a container backend: run the pod. A failure (an image that is not there) leaves
        the pod without a runtime, as RunPod leaves a pod whose image cannot be pulled."""
        if self.backend is None:
            return
        try:
            pod["portmap"] = self.backend.start(pod)
            pod["container_error"] = None
        except (BackendError, OSError, subprocess.SubprocessError) as exc:
            pod["container_error"] = str(exc)

    def rest_create(self, body: dict[str, Any]) -> dict[str, Any]:
        """RunPod REST `POST /pods` (the fields the runpod_pod module sends)."""
        gpu_ids = body.get("gpuTypeIds") or []
        if not isinstance(gpu_ids, list) or not gpu_ids:
            raise _APIError("gpuTypeIds: at least one GPU type is required", status=400)
        env = body.get("env") or {}
        if not isinstance(env, dict):
            raise _APIError("env must be an object", status=400)
        spec = {
            "name": body.get("name"),
            "imageName": body.get("imageName", ""),
            "gpuTypeId": gpu_ids[0],
            "cloudType": body.get("cloudType", "SECURE"),
            "gpuCount": body.get("gpuCount", 1),
            "volumeInGb": body.get("volumeInGb", 0),
            "containerDiskInGb": body.get("containerDiskInGb", 50),
            "volumeMountPath": body.get("volumeMountPath", "/workspace"),
            "ports": ",".join(body.get("ports") or []),
            "env": [{"key": str(k), "value": str(v)} for k, v in env.items()],
            "templateId": body.get("templateId"),
            "networkVolumeId": body.get("networkVolumeId"),
        }
        if not spec["name"]:
            raise _APIError("name is required", status=400)
        self.requests.append({"op": "restCreatePod", "t": time.time(), "name": spec["name"]})
        injected = self.injected.get("restCreatePod")
        if injected:
            self.requests[-1]["injected"] = True
            failure = injected[0]
            failure["count"] -= 1
            if failure["count"] <= 0:
                injected.pop(0)
            raise _APIError(failure["message"], status=int(failure["status"]))
        created = self._deploy({"input": spec}, global_networking=bool(body.get("globalNetworking")))
        pod = self.pods_by_id[created["id"]]
        return {
            "id": pod["id"],
            "name": pod["name"],
            "desiredStatus": "RUNNING",
            "imageName": pod["imageName"],
            "gpuCount": pod["gpuCount"],
            "globalNetworking": pod["globalNetworking"],
            "costPerHr": pod["costPerHr"],
        }

    def _pod_for(self, args: dict[str, Any]) -> dict[str, Any]:
        pod_id = (args.get("input") or {}).get("podId")
        pod = self.pods_by_id.get(str(pod_id))
        if pod is None:
            raise _APIError("pod not found")
        return pod

    def handle_operation(self, op: str, query: str) -> dict[str, Any]:
        """The `data` for one authorised GraphQL request; raises _APIError for an `errors` reply."""
        args = parse_arguments(query, op) if op != "myself" else {}
        record: dict[str, Any] = {"op": op, "t": time.time()}
        record.update({k: v for k, v in (args.get("input") or {}).items() if k in ("podId", "name", "gpuTypeId")})
        self.requests.append(record)
        injected = self.injected.get(op)
        if injected:
            record["injected"] = True  # tests tell injected failures from real answers
            spec = injected[0]
            spec["count"] -= 1
            if spec["count"] <= 0:
                injected.pop(0)
            raise _APIError(
                spec["message"], status=int(spec["status"]), raw=spec.get("raw"), headers=spec.get("headers")
            )
        if op == "gpuTypes":
            gpu_args = parse_arguments(query, "gpuTypes").get("input") or {}
            wanted = gpu_args.get("id")
            return {
                "gpuTypes": [
                    {"id": gid, **gpu, "lowestPrice": {"minimumBidPrice": None, "uninterruptablePrice": None}}
                    for gid, gpu in self.gpu_types.items()
                    if wanted is None or gid == wanted
                ]
            }
        if op == "podFindAndDeployOnDemand":
            return {op: self._deploy(args)}
        if op == "deployCpuPod":
            raise _APIError("CPU pods are not supported by this fake")
        if op == "pod":
            pod_id = (args.get("input") or {}).get("podId")
            pod = self.pods_by_id.get(str(pod_id))
            return {"pod": self._view(pod) if pod else None}
        if op == "myself":
            return {
                "myself": {
                    "id": "user_fake",
                    "pubKey": "",
                    "networkVolumes": self.config["network_volumes"],
                    "pods": [self._view(p) for p in self.pods_by_id.values()],
                }
            }
        pod = self._pod_for(args)
        if op == "podStop":
            self._set_status(pod, "EXITED")
            if self.backend is not None:
                self.backend.stop(pod)
            return {op: {"id": pod["id"], "desiredStatus": "EXITED"}}
        if op == "podResume":
            if pod["gpuTypeId"] in self.config["no_capacity"]:
                raise _APIError("There are not enough free GPUs on the host machine to start this pod.")
            pod["resumes"] += 1
            self._set_status(pod, "RUNNING")
            self._start_container(pod)
            view = self._view(pod)
            return {op: {k: view[k] for k in ("id", "desiredStatus", "imageName", "env", "machineId", "machine")}}
        if op == "podTerminate":
            if self.backend is not None:
                self.backend.remove(pod)
            del self.pods_by_id[pod["id"]]
            self.terminated.append({"id": pod["id"], "name": pod["name"], "t": time.time()})
            return {op: None}
        raise _APIError(f'Cannot query field "{op}"', status=400)

    # ----------------------------------------------------------------- HTTP

    async def _graphql(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ").strip()
        try:
            body = await request.json()
            query = str(body["query"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"errors": [{"message": "Must provide query string."}]}, status=400)
        op = next((name for name, pattern in _OPERATIONS if pattern.search(query)), None)
        if op is None and _GPU_TYPES.search(query):
            op = "gpuTypes"
        # Off the event loop: with a container backend an operation runs podman for seconds.
        return await asyncio.get_running_loop().run_in_executor(None, self._answer, key, op, query)

    def _answer(self, key: str, op: str | None, query: str) -> web.Response:
        with self._lock:
            if key not in self.config["api_keys"]:
                self.requests.append({"op": op or "?", "t": time.time(), "authorized": False})
                self._save()
                # RunPod answers a bad key with 401 and a short text body.
                return web.Response(status=401, text="401 Unauthorized")
            if op is None:
                return web.json_response({"errors": [{"message": "unknown operation"}]}, status=400)
            try:
                data = self.handle_operation(op, query)
            except GraphQLSyntaxError as exc:
                return web.json_response({"errors": [{"message": str(exc)}]}, status=400)
            except _APIError as exc:
                if exc.raw is not None:  # an injected non-GraphQL body: a proxy's HTML page, garbage
                    return web.Response(status=exc.status, text=exc.raw, headers=exc.headers)
                return web.json_response(
                    {"errors": [{"message": exc.message, "path": [op]}], "data": {op: None}},
                    status=exc.status,
                    headers=exc.headers,
                )
            finally:
                self._save()
        return web.json_response({"data": data})

    async def _rest_create(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        with self._lock:
            if key not in self.config["api_keys"]:
                self.requests.append({"op": "restCreatePod", "t": time.time(), "authorized": False})
                return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise TypeError("expected a JSON object")
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"invalid request body: {exc}"}, status=400)
        loop = asyncio.get_running_loop()

        def create() -> dict[str, Any]:
            with self._lock:
                try:
                    return self.rest_create(body)
                finally:
                    self._save()

        try:
            # A container start takes a second or more: keep the API answering meanwhile.
            pod = await loop.run_in_executor(None, create)
        except _APIError as exc:
            # RunPod's REST API answers a refusal (no capacity, a bad field) with a 4xx and a message.
            return web.json_response({"error": exc.message}, status=exc.status if exc.status >= 400 else 400)
        return web.json_response(pod, status=201)

    async def _control(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise TypeError("expected a JSON object")
            await asyncio.get_running_loop().run_in_executor(None, self.control, changes)
        except (ValueError, TypeError, KeyError, BackendError) as exc:
            return web.json_response({"error": f"bad control request: {exc!r}"}, status=400)
        return web.json_response(self.state())

    async def _state(self, _request: web.Request) -> web.Response:
        return web.json_response(self.state())

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/graphql", self._graphql)
        app.router.add_post("/v1/pods", self._rest_create)
        app.router.add_post("/_control", self._control)
        app.router.add_get("/_state", self._state)
        return app

    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeRunPod:
        """Serve in a background thread; `self.url` is the base URL for RUNPOD_API_BASE_URL."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                runner = web.AppRunner(self.app(), access_log=None)
                loop.run_until_complete(runner.setup())
                site = web.TCPSite(runner, host, port)
                loop.run_until_complete(site.start())
                self._runner = runner
                bound = runner.addresses[0][1]
                self.url = f"http://{host}:{bound}"
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-runpod", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None


class _APIError(Exception):
    def __init__(
        self, message: str, status: int = 200, raw: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.raw = raw
        self.headers = headers or {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--pods-listen",
        action="store_true",
        help="also listen on the pod network's gateway address (container backend), so pods reach the API",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, default=None, help="JSON file that keeps pods across restarts")
    parser.add_argument("--api-key", action="append", default=None, help="accepted key (repeatable)")
    parser.add_argument("--start-delay", type=float, default=0.5, help="seconds from CREATED to RUNNING")
    parser.add_argument("--public-ip", default="127.0.0.1")
    parser.add_argument("--backend", choices=["none", "podman"], default="none", help="podman: pods are containers")
    parser.add_argument("--pod-network", default="gw-runpod", help="podman network of the pods")
    parser.add_argument("--pod-prefix", default="gwpod-", help="name prefix of the pods' containers and volumes")
    parser.add_argument("--pod-vcpus", type=int, default=None, help="vCPUs of every pod (container backend)")
    parser.add_argument("--pod-memory-gb", type=int, default=None, help="memory of every pod (container backend)")
    args = parser.parse_args(argv)
    backend = ContainerBackend(network=args.pod_network, prefix=args.pod_prefix) if args.backend == "podman" else None
    fake = FakeRunPod(
        api_keys=args.api_key or [DEFAULT_API_KEY],
        start_delay=args.start_delay,
        public_ip=args.public_ip,
        state_file=args.state,
        backend=backend,
        pod_vcpus=args.pod_vcpus,
        pod_memory_gb=args.pod_memory_gb,
    )
    if args.state and not args.state.exists():
        fake._save()
    socks = [_listen(args.host, args.port)]
    if args.pods_listen and backend is not None:
        # What a pod reaches as RunPod's API (a head that scales the cluster itself); only this
        # emulator's own bridge, never other interfaces.
        socks.append(_listen(backend.gateway(), args.port))
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(fake.app(), sock=socks, access_log=None, print=None)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # The bridge gets its gateway address only once a container is attached: bind before that.
    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


if __name__ == "__main__":
    main()
