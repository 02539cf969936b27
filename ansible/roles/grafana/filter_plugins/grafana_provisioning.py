"""Adapt the repository's Grafana provisioning files to where this deployment puts things."""

from __future__ import annotations

import copy
from typing import Any


def grafana_provisioning(  # noqa: PLR0917 - the filter's positional arguments, as the role passes them
    document: Any,
    kind: str,
    dashboards_dir: str,
    prometheus_url: str,
    basic_auth_user: str = "",
    password_file: str = "",
) -> Any:
    """Dashboard providers of type `file` read `dashboards_dir`; Prometheus data sources point
    at `prometheus_url` (when given) and, for a Prometheus behind a web config, log in as
    `basic_auth_user` with the password Grafana reads from `password_file` ($__file{...}: the
    password itself is never in the provisioning file). Anything else in the file is kept."""
    result = copy.deepcopy(document)
    if not isinstance(result, dict):
        return result
    if kind == "dashboards":
        for provider in result.get("providers") or []:
            if isinstance(provider, dict) and provider.get("type", "file") == "file":
                provider.setdefault("options", {})["path"] = dashboards_dir
    elif kind == "datasources":
        for source in result.get("datasources") or []:
            if not isinstance(source, dict) or source.get("type") != "prometheus":
                continue
            if prometheus_url:
                source["url"] = prometheus_url
            if basic_auth_user and password_file:
                source["basicAuth"] = True
                source["basicAuthUser"] = basic_auth_user
                secure = source.setdefault("secureJsonData", {})
                secure["basicAuthPassword"] = "$__file{" + password_file + "}"
    return result


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"grafana_provisioning": grafana_provisioning}
