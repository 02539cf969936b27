#!/usr/bin/python
"""Ansible module: list RunPod pods (by name prefix) with the same facts runpod_pod returns."""
# ruff: noqa: E402 - Ansible's convention: DOCUMENTATION/EXAMPLES/RETURN come before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: runpod_pod_info
short_description: List RunPod pods whose name starts with a prefix
description:
  - Read-only; runs in check mode too. Uses the C(runpod) Python SDK (1.12).
options:
  name_prefix: {description: Only pods whose name starts with this., type: str, default: ""}
  api_key: {description: RunPod API key; defaults to C(RUNPOD_API_KEY). Never logged., type: str}
  api_url: {description: API base URL; defaults to C(RUNPOD_API_BASE_URL)., type: str}
requirements: [runpod>=1.12]
"""

EXAMPLES = r"""
- name: Worker pods
  runpod_pod_info:
    name_prefix: gw-worker-
  register: workers
"""

RETURN = r"""
pods:
  description: Pods sorted by name, each as runpod_pod's C(pod) return value (id, name, status, ready, role, ...).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib
from ansible.module_utils.runpod_common import RUNPOD_IMPORT_ERROR, PodError, configure, list_pods, pod_facts


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name_prefix": {"type": "str", "default": ""},
            "api_key": {"type": "str", "no_log": True, "fallback": (env_fallback, ["RUNPOD_API_KEY"])},
            "api_url": {"type": "str", "fallback": (env_fallback, ["RUNPOD_API_BASE_URL"])},
        },
        supports_check_mode=True,
    )
    if RUNPOD_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("runpod (pip install 'runpod~=1.12')"), exception=RUNPOD_IMPORT_ERROR)
    try:
        configure(module.params["api_key"], module.params["api_url"])
        pods = [pod_facts(p) for p in list_pods(module.params["name_prefix"])]
    except PodError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, pods=sorted(pods, key=lambda p: (p["name"] or "", p["id"])))


if __name__ == "__main__":
    main()
