"""Adapt the repository's Grafana provisioning files to where this deployment puts things."""

from __future__ import annotations

import copy
from typing import Any


def grafana_provisioning(document: Any, kind: str, dashboards_dir: str, prometheus_url: str) -> Any:
    """Dashboard providers of type `file` read `dashboards_dir`; Prometheus data sources point
    at `prometheus_url` (when given). Anything else in the file is kept as it is."""
    result = copy.deepcopy(document)
    if not isinstance(result, dict):
        return result
    if kind == "dashboards":
        for provider in result.get("providers") or []:
            if isinstance(provider, dict) and provider.get("type", "file") == "file":
                provider.setdefault("options", {})["path"] = dashboards_dir
    elif kind == "datasources" and prometheus_url:
        for source in result.get("datasources") or []:
            if isinstance(source, dict) and source.get("type") == "prometheus":
                source["url"] = prometheus_url
    return result


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"grafana_provisioning": grafana_provisioning}
