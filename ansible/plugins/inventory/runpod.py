"""Ansible inventory plugin: RunPod pods (by name prefix) as hosts in slurm_head / slurm_workers."""
# ruff: noqa: E402 - Ansible's convention: DOCUMENTATION/EXAMPLES/RETURN come before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
name: runpod
plugin_type: inventory
short_description: RunPod pods as Ansible hosts, grouped for Slurm
description:
  - Lists pods through the C(runpod) Python SDK (1.12) and adds those whose name starts with
    I(name_prefix), named by pod name. A pod's role is the value of its I(role_env) environment
    variable (the pod image's C(WATCHDOG_ROLE)), or, without one, C(head) when its name matches
    I(head_pattern) and C(worker) otherwise.
  - Pods that run with their SSH port published go into I(head_group) or I(worker_group), with
    C(ansible_host)/C(ansible_port) from the public mapping of 22/tcp and C(ansible_user).
    Pods still starting or stopped go only into C(runpod) and C(runpod_not_ready) (nothing to
    connect to yet).
  - For the Slurm roles, ready pods also get C(slurm_node_name) (the pod name, which the pod
    image passes to slurmd as its node name), C(slurm_node_address) (the pod's internal DNS
    name), C(slurm_node_gpus) (its GPU count), C(slurm_node_gpu_type) (its GPU's display
    name, lowercased, alphanumerics only, e.g. C(rtx4090)), C(slurm_node_cpus) and
    C(slurm_node_memory_mb) (the pod's vCPUs and 95% of its memory as the API reports them;
    inside a container the facts show the host's, and Slurm would oversubscribe the pod).
    host_vars/group_vars override them.
  - Ready pods get C(gpu_watchdog_scrape_host) = the pod's internal DNS name, so Prometheus
    scrapes and reaches Alertmanager over global networking, never at the public address of
    the SSH mapping (C(ansible_host)).
  - Every pod gets C(runpod_id), C(runpod_status), C(runpod_role), C(runpod_cost_per_hr),
    C(runpod_gpu_type), C(runpod_gpu_count), C(runpod_image), C(runpod_ports),
    C(runpod_public_ip) and C(runpod_internal_dns) (C(<pod_id>.runpod.internal)).
  - Configuration files must end in C(.runpod.yml) or C(.runpod.yaml).
options:
  plugin: {description: Marks this file as a config of this plugin., required: true, choices: [runpod]}
  name_prefix: {description: Only pods whose name starts with this., type: str, default: ""}
  role_env:
    description: Pod environment variable that tags the pod's role (head or worker).
    type: str
    default: WATCHDOG_ROLE
  head_pattern:
    description: Regular expression on the pod name marking the head when a pod has no role tag.
    type: str
    default: "-head$"
  head_group: {description: Group of the head pod(s)., type: str, default: slurm_head}
  worker_group: {description: Group of the worker pods., type: str, default: slurm_workers}
  monitoring_group:
    description: Group the head pods also join (site.yml puts the monitoring stack there); empty for none.
    type: str
    default: monitoring
  ansible_user: {description: User to connect as., type: str, default: root}
  ssh_common_args:
    description:
      - C(ansible_ssh_common_args) of every pod. A new pod brings a new host key (often on a
        recycled IP and port), so keys are trusted on first use in a known_hosts file of their own.
    type: str
    default: "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=~/.ssh/known_hosts_runpod"
  api_key:
    description: RunPod API key. Never written to the inventory.
    type: str
    env: [{name: RUNPOD_API_KEY}]
  api_url:
    description: API base URL (a proxy or a test server).
    type: str
    env: [{name: RUNPOD_API_BASE_URL}]
extends_documentation_fragment: [constructed]
"""

EXAMPLES = r"""
# inventory/cluster.runpod.yml
plugin: runpod
name_prefix: gw-
keyed_groups:
  - key: runpod_gpu_type
    prefix: gpu
"""

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ansible.errors import AnsibleParserError

from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

_COMMON_PATH = Path(__file__).resolve().parent.parent / "module_utils" / "runpod_common.py"


def _load_common() -> ModuleType:
    """The modules' shared code (module_utils is packaged for modules, not for controller plugins)."""
    name = "gpu_watchdog_runpod_common"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _COMMON_PATH)
    if spec is None or spec.loader is None:
        raise AnsibleParserError(f"cannot load {_COMMON_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "runpod"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith((".runpod.yml", ".runpod.yaml"))

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        common = _load_common()
        try:
            common.configure(self.get_option("api_key"), self.get_option("api_url"))
            pods = common.list_pods(self.get_option("name_prefix") or "")
        except common.PodError as exc:
            raise AnsibleParserError(f"runpod inventory ({path}): {exc}") from None

        head_pattern = re.compile(self.get_option("head_pattern"))
        role_env = self.get_option("role_env")
        head_group = self.inventory.add_group(self.get_option("head_group"))
        worker_group = self.inventory.add_group(self.get_option("worker_group"))
        monitoring_name = self.get_option("monitoring_group")
        monitoring = self.inventory.add_group(monitoring_name) if monitoring_name else None
        all_pods = self.inventory.add_group("runpod")
        not_ready = self.inventory.add_group("runpod_not_ready")
        strict = self.get_option("strict")

        for pod in sorted(pods, key=lambda p: str(p.get("name"))):
            facts = common.pod_facts(pod)
            host = self.inventory.add_host(facts["name"], group=all_pods)
            role = common.pod_env(pod).get(role_env) or ("head" if head_pattern.search(facts["name"]) else "worker")
            hostvars = {
                "runpod_id": facts["id"],
                "runpod_status": facts["status"],
                "runpod_role": role,
                "runpod_cost_per_hr": facts["cost_per_hr"],
                "runpod_gpu_type": facts["gpu_type"],
                "runpod_gpu_count": facts["gpu_count"],
                "runpod_image": facts["image"],
                "runpod_ports": facts["ports"],
                "runpod_public_ip": facts["public_ip"],
                "runpod_internal_dns": facts["internal_dns"],
            }
            if facts["ready"] and facts["ssh"]:
                hostvars.update(
                    ansible_host=facts["ssh"]["host"],
                    ansible_port=facts["ssh"]["port"],
                    ansible_user=self.get_option("ansible_user"),
                    ansible_ssh_common_args=self.get_option("ssh_common_args"),
                    slurm_node_name=facts["name"],
                    slurm_node_address=facts["internal_dns"],
                    slurm_node_gpus=facts["gpu_count"] or 0,
                    slurm_node_gpu_type=re.sub(r"[^a-z0-9]", "", str(facts["gpu_type"] or "gpu").lower()) or "gpu",
                    gpu_watchdog_scrape_host=facts["internal_dns"],
                )
                if facts["vcpus"]:
                    hostvars["slurm_node_cpus"] = int(facts["vcpus"])
                if facts["memory_gb"]:
                    hostvars["slurm_node_memory_mb"] = int(float(facts["memory_gb"]) * 1024 * 0.95)
                self.inventory.add_child(head_group if role == "head" else worker_group, host)
                if role == "head" and monitoring:
                    self.inventory.add_child(monitoring, host)
            else:
                self.inventory.add_child(not_ready, host)
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict=strict)
