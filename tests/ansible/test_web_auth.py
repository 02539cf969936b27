"""The web_auth role's hashing helper (gw-web-auth.py), run as the role runs it: passwords on
stdin, the web config on stdout, an existing hash kept while it still verifies. And the grafana
role's data source with and without Prometheus web users."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import bcrypt
import yaml

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "ansible" / "roles" / "web_auth" / "files" / "gw-web-auth.py"
GRAFANA_FILTER = REPO / "ansible" / "roles" / "grafana" / "filter_plugins" / "grafana_provisioning.py"


def _run(users: dict[str, Any], existing: Path) -> subprocess.CompletedProcess[str]:
    request = json.dumps({"users": users, "file": str(existing), "cost": 4})
    code = HELPER.read_text()
    # As the role does: the code as -c's argument, the passwords on stdin.
    return subprocess.run([sys.executable, "-c", code], input=request, capture_output=True, text=True, timeout=30)


def test_hashes_are_made_then_kept_while_they_verify(tmp_path: Path) -> None:
    web_config = tmp_path / "web-config.yml"
    first = _run({"admin": "pw-one", "grafana": "pw-two"}, web_config)
    assert first.returncode == 0, first.stderr
    assert "pw-one" not in first.stdout and "pw-two" not in first.stdout
    users = yaml.safe_load(first.stdout)["basic_auth_users"]  # JSON is the YAML exporter-toolkit reads
    assert bcrypt.checkpw(b"pw-one", users["admin"].encode())
    assert bcrypt.checkpw(b"pw-two", users["grafana"].encode())
    web_config.write_text(first.stdout)

    again = _run({"admin": "pw-one", "grafana": "pw-two"}, web_config)
    assert again.stdout == first.stdout  # same file: Ansible reports no change

    changed = _run({"admin": "pw-new", "grafana": "pw-two"}, web_config)
    new_users = json.loads(changed.stdout)["basic_auth_users"]
    assert new_users["grafana"] == users["grafana"]
    assert new_users["admin"] != users["admin"] and bcrypt.checkpw(b"pw-new", new_users["admin"].encode())


def test_a_foreign_or_broken_file_is_replaced_and_bad_users_refused(tmp_path: Path) -> None:
    web_config = tmp_path / "web-config.yml"
    web_config.write_text("basic_auth_users:\n  admin: not-a-hash\n")
    result = _run({"admin": "pw"}, web_config)
    assert result.returncode == 0, result.stderr
    assert bcrypt.checkpw(b"pw", json.loads(result.stdout)["basic_auth_users"]["admin"].encode())
    for users in ({"a:b": "pw"}, {"admin": ""}, {}):
        bad = _run(users, web_config)
        assert bad.returncode == 2 and "gw-web-auth:" in bad.stderr and bad.stdout == ""


def test_grafana_data_source_logs_in_only_when_prometheus_has_users() -> None:
    spec = importlib.util.spec_from_file_location("grafana_provisioning", GRAFANA_FILTER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped = yaml.safe_load((REPO / "grafana" / "provisioning" / "datasources" / "gpu-watchdog.yml").read_text())
    plain = module.grafana_provisioning(shipped, "datasources", "/d", "http://127.0.0.1:19090")
    (source,) = plain["datasources"]
    assert source["url"] == "http://127.0.0.1:19090"
    assert not {"basicAuth", "basicAuthUser", "secureJsonData"} & set(source)  # as shipped: no auth
    secured = module.grafana_provisioning(shipped, "datasources", "/d", "", "admin", "/etc/grafana/pw")
    (source,) = secured["datasources"]
    assert source["url"] == shipped["datasources"][0]["url"]
    assert (source["basicAuth"], source["basicAuthUser"]) == (True, "admin")
    assert source["secureJsonData"] == {"basicAuthPassword": "$__file{/etc/grafana/pw}"}
    assert "secureJsonData" not in shipped["datasources"][0]  # the input is not modified
