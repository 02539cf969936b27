#!/usr/bin/python
"""Ansible module: manage one RunPod GPU pod by name, idempotently, through the `runpod` SDK."""
# ruff: noqa: E402 - Ansible's convention: DOCUMENTATION/EXAMPLES/RETURN come before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: runpod_pod
short_description: Create, stop, resume and terminate a RunPod GPU pod, by name
description:
  - Manages one RunPod pod identified by its I(name) (pod names are not unique on RunPod, so
    the module refuses to act when several live pods share the name, except to remove them).
  - Uses the C(runpod) Python SDK (1.12); the API endpoint is C(RUNPOD_API_BASE_URL) or I(api_url).
  - A second run with the same parameters changes nothing. Settings of an existing pod are never
    changed (that would mean recreating it and losing its disk); differences are reported as warnings.
  - Capacity shortages are reported with RunPod's message and, with I(gpu_type_fallbacks), retried
    with the other GPU types in order.
options:
  name: {description: Pod name (the identity the module manages by)., type: str, required: true}
  state:
    description:
      - C(present) the pod exists (created if missing; a stopped pod stays stopped).
      - C(running) the pod exists and runs (created or resumed).
      - C(stopped) the pod exists and is stopped (a missing pod is an error).
      - C(absent) no pod of this name exists (every pod of this name is terminated).
    type: str
    choices: [present, running, stopped, absent]
    default: present
  image: {description: Container image; required to create a pod unless I(template_id) is set., type: str}
  gpu_type: {description: RunPod GPU type id (e.g. C(NVIDIA GeForce RTX 4090)); required to create., type: str}
  gpu_type_fallbacks:
    description: GPU type ids tried in order when I(gpu_type) has no capacity.
    type: list
    elements: str
    default: []
  gpu_count: {description: GPUs per pod., type: int, default: 1}
  cloud_type: {description: Where to rent., type: str, choices: [ALL, SECURE, COMMUNITY], default: ALL}
  volume_gb: {description: Persistent volume size in GB., type: int, default: 0}
  container_disk_gb: {description: Container disk size in GB., type: int, default: 10}
  ports:
    description: Ports to expose, C(PORT/tcp) (public IP + mapped port) or C(PORT/http) (RunPod proxy).
    type: list
    elements: str
    default: ["22/tcp"]
  env: {description: Environment variables for the container., type: dict, default: {}}
  template_id: {description: RunPod template id., type: str}
  network_volume_id: {description: Network volume to attach., type: str}
  wait: {description: Wait until the pod reaches the wanted state., type: bool, default: true}
  wait_timeout:
    description: Seconds to wait; past them the module fails with the pod's last status.
    type: int
    default: 900
  poll_interval: {description: Seconds between status polls while waiting., type: float, default: 5}
  capacity_retries:
    description: Extra rounds over I(gpu_type) + I(gpu_type_fallbacks) when all lack capacity.
    type: int
    default: 0
  capacity_retry_delay: {description: Seconds between those rounds., type: float, default: 30}
  api_key:
    description: RunPod API key; defaults to the C(RUNPOD_API_KEY) environment variable. Never logged.
    type: str
  api_url:
    description: API base URL (for a proxy or a test server); defaults to C(RUNPOD_API_BASE_URL).
    type: str
  global_networking:
    description:
      - Create the pod with RunPod's global networking, so the account's other pods reach it as
        C(<pod_id>.runpod.internal) (Slurm, Prometheus and Alertmanager need it). The GraphQL
        call the SDK makes has no field for it, so such pods are created through RunPod's REST
        API (C(POST /pods) with C(globalNetworking)); everything else still goes through the SDK.
    type: bool
    default: true
  rest_url:
    description: RunPod REST API base URL; defaults to C(RUNPOD_REST_API_URL), else C(https://rest.runpod.io/v1).
    type: str
  volume_mount_path: {description: Where the pod's volume is mounted., type: str, default: /workspace}
requirements: [runpod>=1.12]
"""

EXAMPLES = r"""
- name: A Slurm worker pod
  runpod_pod:
    name: gw-worker-1
    image: ghcr.io/example/gpu-watchdog-pod:0.1.0
    gpu_type: NVIDIA GeForce RTX 4090
    gpu_type_fallbacks: [NVIDIA L4]
    ports: [22/tcp, 9400/http]
    env: {WATCHDOG_ROLE: worker, WATCHDOG_HEAD_ADDR: "{{ head.pod.internal_dns }}"}
  register: worker
"""

RETURN = r"""
pod:
  description: The pod after the module ran (absent or in check mode before creation, null).
  returned: always
  type: dict
  contains:
    id: {description: Pod id., type: str}
    name: {description: Pod name., type: str}
    status: {description: desiredStatus (CREATED, RUNNING, RESTARTING, EXITED, ...)., type: str}
    ready: {description: RUNNING with its container up (runtime reported)., type: bool}
    cost_per_hr: {description: Dollars per hour., type: float}
    gpu_type: {description: GPU display name., type: str}
    gpu_count: {description: GPUs., type: int}
    image: {description: Container image., type: str}
    public_ip: {description: Public IP of the TCP ports (null until up)., type: str}
    ports: {description: 'Port map: "22/tcp" -> {host, port, public}; HTTP ports also get a proxy url.', type: dict}
    ssh: {description: '{host, port} of the public 22/tcp mapping, when there is one.', type: dict}
    internal_dns: {description: "<pod_id>.runpod.internal (global networking).", type: str}
id: {description: Pod id (null if none)., returned: always, type: str}
status: {description: Pod status (ABSENT when there is none)., returned: always, type: str}
cost_per_hr: {description: Dollars per hour., returned: when a pod exists, type: float}
public_ip: {description: Public IP., returned: when a pod exists, type: str}
port_map: {description: Same as pod.ports., returned: when a pod exists, type: dict}
internal_dns: {description: Same as pod.internal_dns., returned: when a pod exists, type: str}
gpu_type_used: {description: GPU type id the pod was created with (after fallbacks)., returned: on creation, type: str}
capacity_errors:
  description: GPU type id -> RunPod's message, for each type that had no capacity.
  returned: always
  type: dict
terminated: {description: Ids of the pods terminated., returned: state=absent, type: list}
"""

import re
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib
from ansible.module_utils.runpod_common import (
    AUTH_HINT,
    RUNPOD_IMPORT_ERROR,
    STOPPED_STATUSES,
    PodError,
    RestError,
    configure,
    gql_string,
    is_capacity_error,
    list_pods,
    pod_facts,
    rest_create_pod,
    runpod,
    runpod_error,
    sdk_call,
)

_PORT = re.compile(r"^\d{1,5}/(tcp|http)$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# env values under names like these (MUNGE_KEY, HF_TOKEN, ...) are masked in every output.
_SECRET_ENV = re.compile(r"(?i)(key|token|secret|passw|credential)")


class PodManager:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.capacity_errors: dict[str, str] = {}
        self.warnings: list[str] = []

    # ------------------------------------------------------------- API calls

    def find(self) -> list[dict[str, Any]]:
        # A pod on its way out may still be listed as TERMINATED: it no longer counts.
        return [
            p
            for p in list_pods(self.params["name"])
            if p.get("name") == self.params["name"] and p.get("desiredStatus") != "TERMINATED"
        ]

    def get(self, pod_id: str) -> dict[str, Any] | None:
        return sdk_call(f"read pod {pod_id}", runpod.get_pod, pod_id)

    # ------------------------------------------------------------- waiting

    def wait_for(self, pod_id: str, want: str) -> dict[str, Any]:
        """Poll until the pod is `want` (RUNNING means: container up, ports known)."""
        deadline = time.monotonic() + self.params["wait_timeout"]
        last: dict[str, Any] | None = None
        while True:
            last = self.get(pod_id)
            if last is None:
                raise PodError(f"pod {self.params['name']} ({pod_id}) disappeared while waiting for {want}")
            status = last.get("desiredStatus")
            if want == "RUNNING" and status == "RUNNING" and last.get("runtime"):
                return last
            if want == "EXITED" and status in STOPPED_STATUSES:
                return last
            if time.monotonic() >= deadline:
                up = "container up" if last.get("runtime") else "container not up (no runtime)"
                raise PodError(
                    f"pod {self.params['name']} ({pod_id}) did not reach {want} within "
                    f"{self.params['wait_timeout']}s; last status: {status}, {up}",
                )
            time.sleep(self.params["poll_interval"])

    # ------------------------------------------------------------- actions

    def create(self) -> tuple[dict[str, Any], str]:
        params = self.params
        if not params["image"] and not params["template_id"]:
            raise PodError("image (or template_id) is required to create a pod")
        if not params["gpu_type"]:
            raise PodError("gpu_type is required to create a pod")
        candidates = [params["gpu_type"], *[g for g in params["gpu_type_fallbacks"] if g != params["gpu_type"]]]
        if params["global_networking"]:
            return self._create_rest(candidates)
        env = {k: gql_string(str(v)) for k, v in params["env"].items()}
        for round_no in range(params["capacity_retries"] + 1):
            if round_no:
                time.sleep(params["capacity_retry_delay"])
            for gpu_type in candidates:
                try:
                    created = runpod.create_pod(
                        name=gql_string(params["name"]),
                        image_name=gql_string(params["image"] or ""),
                        gpu_type_id=gql_string(gpu_type),
                        cloud_type=params["cloud_type"],
                        gpu_count=params["gpu_count"],
                        volume_in_gb=params["volume_gb"],
                        container_disk_in_gb=params["container_disk_gb"],
                        ports=",".join(params["ports"]) or None,
                        env=env or None,
                        template_id=params["template_id"],
                        network_volume_id=params["network_volume_id"],
                        volume_mount_path=gql_string(params["volume_mount_path"]),
                    )
                except runpod_error.QueryError as exc:
                    if is_capacity_error(str(exc)):
                        self.capacity_errors[gpu_type] = str(exc)
                        continue
                    raise PodError(f"RunPod refused to create pod {params['name']} on {gpu_type}: {exc}") from None
                except runpod_error.AuthenticationError:
                    raise PodError(
                        f"RunPod rejected the API key while trying to create a pod (HTTP 401): {AUTH_HINT}"
                    ) from None
                except ValueError as exc:
                    raise PodError(f"cannot create pod {params['name']} on {gpu_type}: {exc}") from None
                except Exception as exc:
                    raise PodError(
                        f"cannot reach the RunPod API to create a pod: {type(exc).__name__}: {exc}"
                    ) from None
                return created, gpu_type
        raise self._no_capacity(candidates)

    def _create_rest(self, candidates: list[str]) -> tuple[dict[str, Any], str]:
        params = self.params
        body: dict[str, Any] = {
            "name": params["name"],
            "imageName": params["image"] or "",
            "gpuCount": params["gpu_count"],
            "cloudType": params["cloud_type"] if params["cloud_type"] != "ALL" else "SECURE",
            "computeType": "GPU",
            "containerDiskInGb": params["container_disk_gb"],
            "volumeInGb": params["volume_gb"],
            "volumeMountPath": params["volume_mount_path"],
            "ports": list(params["ports"]),
            "env": {k: str(v) for k, v in params["env"].items()},
            "globalNetworking": True,
        }
        for key, param in (("templateId", "template_id"), ("networkVolumeId", "network_volume_id")):
            if params[param]:
                body[key] = params[param]
        for round_no in range(params["capacity_retries"] + 1):
            if round_no:
                time.sleep(params["capacity_retry_delay"])
            for gpu_type in candidates:
                # As the SDK's GraphQL create does: an unknown type fails here, clearly.
                sdk_call(f"look up GPU type {gpu_type}", runpod.get_gpu, gpu_type)
                try:
                    created = rest_create_pod(params["rest_url"], params["api_key"], body | {"gpuTypeIds": [gpu_type]})
                except RestError as exc:
                    if is_capacity_error(str(exc)):
                        self.capacity_errors[gpu_type] = str(exc)
                        continue
                    raise PodError(f"RunPod refused to create pod {params['name']} on {gpu_type}: {exc}") from None
                return created, gpu_type
        raise self._no_capacity(candidates)

    def _no_capacity(self, candidates: list[str]) -> PodError:
        params = self.params
        tried = ", ".join(candidates)
        detail = next(iter(self.capacity_errors.values()))
        rounds = f" (in {params['capacity_retries'] + 1} rounds)" if params["capacity_retries"] else ""
        return PodError(f"no capacity for pod {params['name']} with any GPU type tried ({tried}){rounds}: {detail}")

    def drift(self, pod: dict[str, Any]) -> None:
        """Warn (never act) when an existing pod differs from what the task asks for."""
        params = self.params
        if params["image"] and pod.get("imageName") not in (None, params["image"]):
            self.warnings.append(
                f"pod {params['name']} runs image {pod.get('imageName')}, not {params['image']}: "
                "terminate it (state=absent) to recreate"
            )
        if pod.get("gpuCount") not in (None, params["gpu_count"]):
            self.warnings.append(f"pod {params['name']} has {pod.get('gpuCount')} GPUs, not {params['gpu_count']}")

    def run(self) -> dict[str, Any]:
        params = self.params
        state = params["state"]
        check = self.module.check_mode
        pods = self.find()
        result: dict[str, Any] = {"changed": False, "pod": None, "id": None, "status": "ABSENT"}

        if state == "absent":
            terminated = []
            for pod in pods:
                terminated.append(pod["id"])
                if not check:
                    try:
                        sdk_call(f"terminate pod {pod['id']}", runpod.terminate_pod, pod["id"])
                    except PodError as exc:
                        # Already gone between the listing and now: that is what we wanted.
                        if "not found" not in str(exc).lower():
                            raise
            if terminated and not check and params["wait"]:
                deadline = time.monotonic() + params["wait_timeout"]
                while any((p := self.get(i)) and p.get("desiredStatus") != "TERMINATED" for i in terminated):
                    if time.monotonic() >= deadline:
                        raise PodError(f"pods {terminated} still exist {params['wait_timeout']}s after termination")
                    time.sleep(params["poll_interval"])
            result.update(changed=bool(terminated), terminated=terminated)
            return result

        if len(pods) > 1:
            ids = ", ".join(p["id"] for p in pods)
            raise PodError(f"{len(pods)} pods are named {params['name']} ({ids}); remove the extra ones first")

        pod = pods[0] if pods else None
        if pod is None:
            if state == "stopped":
                raise PodError(f"pod {params['name']} does not exist; create it first (state=present or running)")
            if check:
                result.update(changed=True, status="WOULD_CREATE")
                return result
            created, gpu_type = self.create()
            result.update(changed=True, gpu_type_used=gpu_type)
            pod = self.wait_for(created["id"], "RUNNING") if params["wait"] else self.get(created["id"]) or created
        else:
            self.drift(pod)
            status = pod.get("desiredStatus")
            stopped = status in STOPPED_STATUSES
            if state == "running" and stopped:
                result["changed"] = True
                if not check:
                    sdk_call(f"resume pod {pod['id']}", runpod.resume_pod, pod["id"], pod.get("gpuCount") or 1)
                    pod = self.wait_for(pod["id"], "RUNNING") if params["wait"] else self.get(pod["id"]) or pod
            elif state == "stopped" and not stopped:
                result["changed"] = True
                if not check:
                    sdk_call(f"stop pod {pod['id']}", runpod.stop_pod, pod["id"])
                    pod = self.wait_for(pod["id"], "EXITED") if params["wait"] else self.get(pod["id"]) or pod
            elif params["wait"] and state in ("present", "running") and not stopped and not check:
                # Created by an earlier run that did not wait (or is still starting): wait, change nothing.
                pod = self.wait_for(pod["id"], "RUNNING")
        facts = pod_facts(pod)
        result.update(
            pod=facts,
            id=facts["id"],
            status=facts["status"],
            cost_per_hr=facts["cost_per_hr"],
            public_ip=facts["public_ip"],
            port_map=facts["ports"],
            internal_dns=facts["internal_dns"],
        )
        return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "running", "stopped", "absent"]},
            "image": {"type": "str"},
            "gpu_type": {"type": "str"},
            "gpu_type_fallbacks": {"type": "list", "elements": "str", "default": []},
            "gpu_count": {"type": "int", "default": 1},
            "cloud_type": {"type": "str", "default": "ALL", "choices": ["ALL", "SECURE", "COMMUNITY"]},
            "volume_gb": {"type": "int", "default": 0},
            "container_disk_gb": {"type": "int", "default": 10},
            "ports": {"type": "list", "elements": "str", "default": ["22/tcp"]},
            "env": {"type": "dict", "default": {}},
            "template_id": {"type": "str"},
            "network_volume_id": {"type": "str"},
            "wait": {"type": "bool", "default": True},
            "wait_timeout": {"type": "int", "default": 900},
            "poll_interval": {"type": "float", "default": 5.0},
            "capacity_retries": {"type": "int", "default": 0},
            "capacity_retry_delay": {"type": "float", "default": 30.0},
            "api_key": {"type": "str", "no_log": True, "fallback": (env_fallback, ["RUNPOD_API_KEY"])},
            "api_url": {"type": "str", "fallback": (env_fallback, ["RUNPOD_API_BASE_URL"])},
            "global_networking": {"type": "bool", "default": True},
            "rest_url": {"type": "str", "fallback": (env_fallback, ["RUNPOD_REST_API_URL"])},
            "volume_mount_path": {"type": "str", "default": "/workspace"},
        },
        supports_check_mode=True,
    )
    if RUNPOD_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("runpod (pip install 'runpod~=1.12')"), exception=RUNPOD_IMPORT_ERROR)
    params = module.params
    bad_ports = [p for p in params["ports"] if not _PORT.match(p)]
    if bad_ports:
        module.fail_json(msg=f"ports must look like 22/tcp or 8000/http; got {bad_ports}")
    bad_env = [k for k in params["env"] if not _ENV_KEY.match(str(k))]
    if bad_env:
        module.fail_json(msg=f"env keys must be shell variable names; got {bad_env}")
    for key, value in params["env"].items():
        if _SECRET_ENV.search(str(key)) and value:
            module.no_log_values.add(str(value))
    if params["gpu_count"] < 1:
        module.fail_json(msg="gpu_count must be at least 1")
    manager = PodManager(module)
    try:
        configure(params["api_key"], params["api_url"])
        result = manager.run()
    except PodError as exc:
        module.fail_json(msg=str(exc), capacity_errors=manager.capacity_errors)
    for warning in manager.warnings:
        module.warn(warning)
    result["capacity_errors"] = manager.capacity_errors
    module.exit_json(**result)


if __name__ == "__main__":
    main()
