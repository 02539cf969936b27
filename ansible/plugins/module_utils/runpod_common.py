"""What the RunPod modules and the inventory plugin share: SDK calls with clear errors, pod facts.

Kept free of Ansible imports so the inventory plugin (controller side) can load this file too.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from typing import Any

try:
    import runpod
    from runpod import error as runpod_error
except ImportError:
    runpod = None
    runpod_error = None
    RUNPOD_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    RUNPOD_IMPORT_ERROR = None

DEFAULT_API_URL = "https://api.runpod.io"
DEFAULT_REST_URL = "https://rest.runpod.io/v1"
# RunPod's wording for "no GPU of that type free right now" on create and on resume.
CAPACITY_MARKERS = ("no longer any instances available", "not enough free gpus", "no instances available")
STOPPED_STATUSES = ("EXITED", "PAUSED")
AUTH_HINT = "check the api_key parameter / RUNPOD_API_KEY"


class PodError(Exception):
    """A failure whose message is safe to show (it never contains the API key)."""


def is_capacity_error(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in CAPACITY_MARKERS)


def gql_string(value: str) -> str:
    """Escape for a GraphQL string literal: the SDK inlines values between quotes unescaped."""
    return json.dumps(value)[1:-1]


def configure(api_key: str | None, api_url: str | None) -> None:
    """Point the SDK at the API; the key is module-level because stop/resume/terminate take none."""
    if runpod is None:
        raise PodError("the runpod Python SDK is not installed where this runs: pip install 'runpod~=1.12'")
    if not api_key:
        raise PodError("no RunPod API key: set the api_key parameter or RUNPOD_API_KEY")
    if api_url:
        # The SDK reads this variable on every call.
        os.environ["RUNPOD_API_BASE_URL"] = api_url.rstrip("/")
    runpod.api_key = api_key


def sdk_call(what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One SDK call, with its failures turned into messages a user can act on."""
    try:
        return func(*args, **kwargs)
    except runpod_error.AuthenticationError:
        raise PodError(f"RunPod rejected the API key while trying to {what} (HTTP 401): {AUTH_HINT}") from None
    except runpod_error.QueryError as exc:
        raise PodError(f"RunPod API error while trying to {what}: {exc}") from None
    except ValueError as exc:  # the SDK's own validation, e.g. an unknown GPU type
        raise PodError(f"cannot {what}: {exc}") from None
    except Exception as exc:  # requests' connection errors and timeouts
        base = os.environ.get("RUNPOD_API_BASE_URL", DEFAULT_API_URL)
        raise PodError(f"cannot reach the RunPod API at {base} to {what}: {type(exc).__name__}: {exc}") from None


class RestError(Exception):
    """A refusal from RunPod's REST API, with its message (never the key)."""


def rest_create_pod(rest_url: str | None, api_key: str, body: dict[str, Any]) -> dict[str, Any]:
    """`POST /pods` on RunPod's REST API (what the SDK's GraphQL create cannot do: globalNetworking)."""
    import requests  # comes with the runpod SDK

    base = (rest_url or os.environ.get("RUNPOD_REST_API_URL") or DEFAULT_REST_URL).rstrip("/")
    try:
        reply = requests.post(
            f"{base}/pods", json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=(10, 120)
        )
    except requests.RequestException as exc:
        raise PodError(f"cannot reach the RunPod REST API at {base} to create a pod: {type(exc).__name__}") from None
    if reply.status_code in (401, 403):
        raise PodError(
            f"RunPod rejected the API key while trying to create a pod (HTTP {reply.status_code}): {AUTH_HINT}"
        )
    try:
        data = reply.json()
    except ValueError:
        data = None
    if reply.status_code >= 400 or not isinstance(data, dict):
        message = ""
        if isinstance(data, dict):
            message = str(data.get("error") or data.get("message") or "")
        if not message:
            message = f"{reply.text[:300].strip()} (HTTP {reply.status_code})"
        raise RestError(message)
    if not data.get("id"):
        raise RestError(f"the REST API answered without a pod id (HTTP {reply.status_code})")
    return data


def list_pods(name_prefix: str = "") -> list[dict[str, Any]]:
    pods = sdk_call("list pods", runpod.get_pods) or []
    return [p for p in pods if str(p.get("name") or "").startswith(name_prefix)]


def pod_env(pod: dict[str, Any]) -> dict[str, str]:
    """The API lists env as ["KEY=value", ...]."""
    env: dict[str, str] = {}
    for item in pod.get("env") or []:
        key, sep, value = str(item).partition("=")
        if sep:
            env[key] = value
    return env


def pod_facts(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod as the modules return it: status, cost, public IP, port map, internal DNS."""
    runtime = pod.get("runtime") or {}
    ports: dict[str, dict[str, Any]] = {}
    public_ip = None
    for entry in runtime.get("ports") or []:
        key = f"{entry['privatePort']}/{entry['type']}"
        current = ports.get(key)
        # A TCP port has a public mapping and a private one: the public one is what clients use.
        if current is None or (entry.get("isIpPublic") and not current["public"]):
            ports[key] = {
                "host": entry.get("ip"),
                "port": entry.get("publicPort"),
                "public": bool(entry.get("isIpPublic")),
            }
        if entry.get("isIpPublic") and entry.get("ip"):
            public_ip = entry["ip"]
    for key, mapping in ports.items():
        port, _, kind = key.partition("/")
        if kind == "http":
            mapping["url"] = f"https://{pod['id']}-{port}.proxy.runpod.net"
    ssh = ports.get("22/tcp")
    status = pod.get("desiredStatus")
    return {
        "id": pod["id"],
        "name": pod.get("name"),
        "status": status,
        "ready": status == "RUNNING" and bool(pod.get("runtime")),
        "cost_per_hr": pod.get("costPerHr"),
        "gpu_type": (pod.get("machine") or {}).get("gpuDisplayName"),
        "gpu_count": pod.get("gpuCount"),
        "vcpus": pod.get("vcpuCount"),
        "memory_gb": pod.get("memoryInGb"),
        "image": pod.get("imageName"),
        "role": pod_env(pod).get("WATCHDOG_ROLE"),
        "public_ip": public_ip,
        "ports": ports,
        "ssh": {"host": ssh["host"], "port": ssh["port"]} if ssh and ssh["public"] else None,
        "internal_dns": f"{pod['id']}.runpod.internal",
        "uptime_seconds": pod.get("uptimeSeconds"),
    }
