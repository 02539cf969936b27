"""Point an Alertmanager config's agent receiver at the agent webhook (URL and token file)."""

from __future__ import annotations

import copy
from typing import Any


def agent_receiver(
    config: dict[str, Any], receiver: str, url: str | list[str], credentials_file: str
) -> dict[str, Any]:
    """A copy of `config` whose `receiver` sends to `url` with bearer credentials from a file.

    Other receivers, routes and inhibit rules are left as they are; a config without that
    receiver gets it added (routes must name it to use it). A list of URLs (agent replicas on
    PostgreSQL, docs/scaling.md) gets one webhook each, copied from the receiver's first: every
    replica is notified, and the shared store makes one finding of the copies.
    """
    result = copy.deepcopy(config)
    receivers = result.setdefault("receivers", [])
    target = next((r for r in receivers if isinstance(r, dict) and r.get("name") == receiver), None)
    if target is None:
        target = {"name": receiver}
        receivers.append(target)
    hooks = target.get("webhook_configs") or [{"send_resolved": True}]
    if not isinstance(url, str):
        hooks = [{**copy.deepcopy(hooks[0]), "url": u} for u in url] or hooks
    for hook in hooks:
        if isinstance(url, str):
            hook["url"] = url
        http_config = hook.setdefault("http_config", {})
        http_config.pop("bearer_token", None)
        http_config.pop("bearer_token_file", None)
        authorization = http_config.setdefault("authorization", {})
        authorization.pop("credentials", None)
        authorization.setdefault("type", "Bearer")
        authorization["credentials_file"] = credentials_file
    target["webhook_configs"] = hooks
    return result


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"alertmanager_agent_receiver": agent_receiver}
