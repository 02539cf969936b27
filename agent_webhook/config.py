"""The agent's configuration: agent.yml, then GPU_WATCHDOG_* environment variables, then flags.

Precedence, highest first: command-line flags > environment variables > the config file >
built-in defaults. (Flags and environment variables are the same click options, so a flag
given on the command line hides the variable.) Relative paths in agent.yml resolve against the
file's directory, relative paths from flags or the environment against the working directory.

Unknown keys are errors, as in the web config: a typo in `token_file` must not silently leave
the receiver open. `llm` and `slurm` (and whatever else the investigation lists in its
``CONFIG_KEYS``) are passed through to the investigation, which validates them
(:func:`investigation_mapping`).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agent_webhook.investigation.config import CONFIG_KEYS, BasicAuthConfig, basic_auth
from gpu_watchdog_core.logs import has_userinfo, strip_userinfo
from gpu_watchdog_core.sections import mapping_section, reject_unknown
from gpu_watchdog_core.server import ListenAddressError, parse_listen
from gpu_watchdog_core.webconfig import WebConfig, WebConfigError, load_web_config

log = logging.getLogger(__name__)

# SQLite's `synchronous` pragma for the store (`db_synchronous`); the store takes it as given.
Synchronous = Literal["full", "normal"]

SINK_TYPES = ("slack", "webhook", "grafana", "stdout")
# The agent.yml keys the investigation reads; passed through to it as given.
INVESTIGATION_KEYS = CONFIG_KEYS
# Basic auth toward Prometheus / Alertmanager behind a web config: {username, password_file}.
AUTH_SECTIONS = ("prometheus_basic_auth", "alertmanager_basic_auth")
_TOP_KEYS = {
    "listen",
    "db",
    "db_synchronous",
    "token_file",
    "web_config",
    "workers",
    "max_body_bytes",
    "investigation_timeout_seconds",
    "max_attempts",
    "sinks",
    "sink_retry",
    "public_url",
    "actions",
    "reconcile_interval_seconds",
    "reconcile_stale_after_seconds",
    "incident_window_seconds",
    *INVESTIGATION_KEYS,
}
_SINK_KEYS = {
    "type",
    "name",
    "url",
    "token_file",
    "channel",
    "username",
    "dashboard_uid",
    "panel_id",
    "tags",
    "timeout_seconds",
}
_RETRY_KEYS = {"initial_seconds", "max_seconds"}
_ACTIONS_KEYS = {
    "enabled",
    "dry_run",
    "min_workers",
    "max_workers",
    "scale_up_step",
    "cooldown_seconds",
    "spend_cap_dollars_per_hour",
    "worker_cost_dollars_per_hour",
    "name_prefix",
    "partitions",
    "ansible_dir",
    "playbook",
    "inventory",
    "extra_vars",
    "playbook_timeout_seconds",
    "drain_timeout_seconds",
    "api_key_file",
}
DEFAULT_LISTEN = "0.0.0.0:9095"
# Where the agent_webhook Ansible role (`make up`) writes agent.yml: {prefix}/etc/agent.yml.
DEFAULT_PREFIX = "/opt/gpu-watchdog"
PREFIX_ENV = "GPU_WATCHDOG_PREFIX"


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key and the reason."""


@dataclass
class SinkConfig:
    type: str
    name: str
    url: str | None = None
    token: str | None = field(default=None, repr=False)
    channel: str | None = None
    username: str | None = None
    dashboard_uid: str | None = None
    panel_id: int | None = None
    tags: list[str] = field(default_factory=list)
    timeout_seconds: float = 10.0


@dataclass
class ActionsConfig:
    """The `actions` section: guarded scale-up/scale-down of RunPod workers (docs/agent-webhook.md)."""

    enabled: bool = False
    # Safe default: enabling actions first shows what they would do; acting needs dry_run: false too.
    dry_run: bool = True
    min_workers: int = 0
    max_workers: int = 4
    scale_up_step: int = 1
    cooldown_seconds: float = 900.0
    spend_cap_dollars_per_hour: float | None = None
    worker_cost_dollars_per_hour: float | None = None
    name_prefix: str = "gw"
    # Slurm partitions whose GPU backlog may scale the RunPod workers up; empty: any partition.
    partitions: list[str] = field(default_factory=list)
    ansible_dir: Path | None = None
    playbook: str = "scale.yml"
    inventory: Path | None = None
    extra_vars: dict[str, Any] = field(default_factory=dict)
    playbook_timeout_seconds: float = 1800.0
    drain_timeout_seconds: float = 600.0
    api_key: str | None = field(default=None, repr=False)


DATABASE_URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(value: str) -> bool:
    """A `db` that names a PostgreSQL server rather than a SQLite file."""
    return value.startswith(DATABASE_URL_SCHEMES)


@dataclass
class AgentConfig:
    listen: str = DEFAULT_LISTEN
    db: Path = Path("agent-webhook.db")
    # `db` given as a postgresql:// URL: replicas share that database (it may hold a password).
    db_url: str | None = field(default=None, repr=False)
    db_synchronous: Synchronous = "full"
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    web_config: WebConfig = field(default_factory=WebConfig)
    web_config_path: Path | None = None
    workers: int = 4
    max_body_bytes: int = 1 << 20
    investigation_timeout_seconds: float = 300.0
    max_attempts: int = 3
    sinks: list[SinkConfig] = field(default_factory=list)
    sink_retry_initial_seconds: float = 2.0
    sink_retry_max_seconds: float = 600.0
    public_url: str | None = None
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    # Reconciliation with Alertmanager (agent_webhook.reconcile); 0 turns it off. Stale after 10
    # minutes: above Alertmanager's default resolve_timeout (5m), so an alert that Alertmanager
    # dropped and Prometheus re-sends (every resend-delay, 1m) is back long before.
    reconcile_interval_seconds: float = 60.0
    reconcile_stale_after_seconds: float = 600.0
    # Alerts of one node (or Alertmanager group) this close together are one incident
    # (agent_webhook.incidents); 0: every alert its own incident.
    incident_window_seconds: float = 600.0
    # What the investigation reads (prometheus_url, alertmanager_url, llm, slurm), as given.
    investigation: dict[str, Any] = field(default_factory=dict)
    # Credentials for Prometheus / Alertmanager when they sit behind a web config (the
    # reconciliation loop uses alertmanager_auth; the investigation reads its own copy).
    prometheus_auth: BasicAuthConfig | None = None
    alertmanager_auth: BasicAuthConfig | None = None

    @property
    def prometheus_url(self) -> str | None:
        value = self.investigation.get("prometheus_url")
        return str(value) if value else None

    @property
    def alertmanager_url(self) -> str | None:
        value = self.investigation.get("alertmanager_url")
        return str(value) if value else None


def deployed_config() -> Path | None:
    """The agent.yml of the deployment on this host (`$GPU_WATCHDOG_PREFIX/etc/agent.yml`), if any.

    The CLI's `--config` defaults to it, so that `gpu-watchdog findings` and `ask` find the
    agent, its token and Prometheus after `make up` without flags.
    """
    path = Path(os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX) / "etc" / "agent.yml"
    return path if path.is_file() else None


def _read_secret(path: Path, where: str) -> str:
    try:
        text = path.read_text().strip()
    except PermissionError:
        raise ConfigError(
            f"{where}: cannot read {path}: permission denied (a secret, readable by its owner only: "
            "run as that user or root, e.g. with sudo)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if not text:
        raise ConfigError(f"{where}: {path} is empty")
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secret file is readable by group or others", extra={"path": str(path), "key": where})
    return text


def _path(value: Any, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a file path")
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _number(value: Any, where: str, *, minimum: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum:g}")
    return float(value)


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: expected an http:// or https:// URL")
    return value.rstrip("/")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    return mapping_section(value, where, ConfigError)


def _unknown(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    reject_unknown(section, allowed, where, ConfigError)


def load_file(path: Path | None) -> tuple[dict[str, Any], Path]:
    """The raw mapping of agent.yml (empty without a file) and the directory paths resolve against."""
    if path is None:
        return {}, Path.cwd()
    try:
        text = path.read_text()
    except PermissionError:
        raise ConfigError(
            f"cannot read config {path}: permission denied (run as root or a member of its group; "
            "--config /dev/null goes without it)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"config {path} is not valid YAML: {problem}{where}") from None
    return _mapping(data, f"config {path}"), path.parent


def _sinks(raw: Any, base: Path) -> list[SinkConfig]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("sinks: expected a list")
    sinks: list[SinkConfig] = []
    for i, item in enumerate(raw):
        where = f"sinks[{i}]"
        entry = _mapping(item, where)
        _unknown(entry, _SINK_KEYS, where)
        kind = entry.get("type")
        if kind not in SINK_TYPES:
            raise ConfigError(f"{where}.type: expected one of {', '.join(SINK_TYPES)}, got {kind!r}")
        name = str(entry.get("name") or kind)
        if any(s.name == name for s in sinks):
            raise ConfigError(f"{where}.name: {name!r} is used twice; give each sink a distinct name")
        url = None
        if kind != "stdout":
            if "url" not in entry:
                raise ConfigError(f"{where}.url: required for a {kind} sink")
            url = _url(entry["url"], f"{where}.url")
        token = (
            _read_secret(_path(entry["token_file"], f"{where}.token_file", base), f"{where}.token_file")
            if (entry.get("token_file"))
            else None
        )
        if url and token and has_userinfo(url):
            # Both would become an Authorization header: aiohttp refuses the pair on every delivery.
            raise ConfigError(
                f"{where}: credentials both in url ({strip_userinfo(url)} carries user info) and in token_file;"
                " keep one"
            )
        tags = entry.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ConfigError(f"{where}.tags: expected a list of strings")
        panel = entry.get("panel_id")
        sinks.append(
            SinkConfig(
                type=str(kind),
                name=name,
                url=url,
                token=token,
                channel=str(entry["channel"]) if entry.get("channel") else None,
                username=str(entry["username"]) if entry.get("username") else None,
                dashboard_uid=str(entry["dashboard_uid"]) if entry.get("dashboard_uid") else None,
                panel_id=int(_number(panel, f"{where}.panel_id", minimum=0, integer=True))
                if panel is not None
                else None,
                tags=list(tags),
                timeout_seconds=_number(entry.get("timeout_seconds", 10.0), f"{where}.timeout_seconds", minimum=0.1),
            )
        )
    return sinks


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _actions(raw: Any, base: Path) -> ActionsConfig:
    section = _mapping(raw, "actions")
    _unknown(section, _ACTIONS_KEYS, "actions")
    cfg = ActionsConfig()
    cfg.enabled = _bool(section.get("enabled", cfg.enabled), "actions.enabled")
    cfg.dry_run = _bool(section.get("dry_run", cfg.dry_run), "actions.dry_run")
    for key in ("min_workers", "max_workers", "scale_up_step"):
        minimum = 0 if key == "min_workers" else 1
        value = _number(section.get(key, getattr(cfg, key)), f"actions.{key}", minimum=minimum, integer=True)
        setattr(cfg, key, int(value))
    if cfg.min_workers > cfg.max_workers:
        raise ConfigError(f"actions.min_workers ({cfg.min_workers}) is above actions.max_workers ({cfg.max_workers})")
    cfg.cooldown_seconds = _number(
        section.get("cooldown_seconds", cfg.cooldown_seconds), "actions.cooldown_seconds", minimum=0
    )
    for key in ("spend_cap_dollars_per_hour", "worker_cost_dollars_per_hour"):
        if section.get(key) is not None:
            value = _number(section[key], f"actions.{key}", minimum=0)
            if value <= 0:
                raise ConfigError(f"actions.{key}: must be above 0")
            setattr(cfg, key, value)
    if cfg.enabled and cfg.spend_cap_dollars_per_hour is None:
        raise ConfigError("actions.spend_cap_dollars_per_hour: required when actions are enabled")
    prefix = section.get("name_prefix", cfg.name_prefix)
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", prefix):
        raise ConfigError(f"actions.name_prefix: expected a pod name prefix (letters, digits, - _ .), got {prefix!r}")
    cfg.name_prefix = prefix
    partitions = section.get("partitions")
    partitions = [] if partitions is None else partitions
    if not isinstance(partitions, list) or not all(isinstance(p, str) and p.strip() for p in partitions):
        raise ConfigError(f"actions.partitions: expected a list of Slurm partition names, got {partitions!r}")
    cfg.partitions = [p.strip() for p in partitions]
    playbook = section.get("playbook", cfg.playbook)
    if not isinstance(playbook, str) or not playbook.endswith((".yml", ".yaml")):
        raise ConfigError(f"actions.playbook: expected a playbook file name (.yml), got {playbook!r}")
    cfg.playbook = playbook
    for key in ("ansible_dir", "inventory"):
        if section.get(key):
            setattr(cfg, key, _path(section[key], f"actions.{key}", base))
    extra = _mapping(section.get("extra_vars"), "actions.extra_vars")
    if not all(isinstance(k, str) for k in extra):
        raise ConfigError("actions.extra_vars: keys must be strings")
    cfg.extra_vars = dict(extra)
    for key in ("playbook_timeout_seconds", "drain_timeout_seconds"):
        setattr(cfg, key, _number(section.get(key, getattr(cfg, key)), f"actions.{key}", minimum=1))
    if section.get("api_key_file"):
        cfg.api_key = _read_secret(_path(section["api_key_file"], "actions.api_key_file", base), "actions.api_key_file")
    return cfg


def _merge(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], set[str]]:
    """`raw` with the flags/env `overrides` applied, and which path keys came from them."""
    merged: dict[str, Any] = dict(raw)
    flag_paths: set[str] = set()
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("llm_base_url", "llm_model", "slurm_mode"):
            section, _, name = key.partition("_")
            updated = dict(_mapping(merged.get(section), section))
            updated[name] = value
            merged[section] = updated
            continue
        merged[key] = value
        if key in ("db", "token_file", "web_config"):
            flag_paths.add(key)
    _unknown(merged, _TOP_KEYS, "config")
    for key in ("prometheus_url", "alertmanager_url"):
        if merged.get(key):
            merged[key] = _url(merged[key], key)
            # Credentials in a URL end up in logs and evidence; they belong in a password file.
            if has_userinfo(merged[key]):
                auth_key = key.replace("_url", "_basic_auth")
                raise ConfigError(f"{key} must not carry credentials: set {auth_key} (username, password_file) instead")
    return merged, flag_paths


def _resolve_auth_paths(merged: dict[str, Any], base: Path) -> None:
    """A relative `password_file` of the basic-auth sections resolves against agent.yml's directory,
    like every other path in the file (the investigation receives absolute paths)."""
    for key in AUTH_SECTIONS:
        section = merged.get(key)
        if not isinstance(section, Mapping):
            continue
        password_file = section.get("password_file")
        if isinstance(password_file, str) and password_file:
            merged[key] = {**section, "password_file": str(_path(password_file, f"{key}.password_file", base))}


def _investigation_keys(merged: Mapping[str, Any]) -> dict[str, Any]:
    return {key: merged[key] for key in INVESTIGATION_KEYS if key in merged and merged[key] is not None}


def load_investigation(path: Path | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The investigation's settings from agent.yml and flags/env, with the same precedence as
    :func:`load_config`, without reading the agent's own secrets (its token); the investigation
    reads the Prometheus/Alertmanager password files it is given."""
    raw, base = load_file(path)
    merged, _ = _merge(raw, overrides)
    _resolve_auth_paths(merged, base)
    return _investigation_keys(merged)


def build_config(raw: Mapping[str, Any], base: Path, overrides: Mapping[str, Any] | None = None) -> AgentConfig:
    """Validate the merged configuration. `overrides` (flags/env) win over `raw` (the file)."""
    merged, flag_paths = _merge(raw, overrides)
    _resolve_auth_paths(merged, base)
    flag_base = Path.cwd()

    def path_of(key: str) -> Path:
        return _path(merged[key], key, flag_base if key in flag_paths else base)

    cfg = AgentConfig()
    listen = str(merged.get("listen") or DEFAULT_LISTEN)
    try:
        parse_listen(listen)
    except ListenAddressError as exc:
        raise ConfigError(str(exc)) from None
    cfg.listen = listen
    db = merged.get("db")
    if isinstance(db, str) and is_database_url(db):
        cfg.db_url = db
    elif isinstance(db, str) and "://" in db:
        raise ConfigError("db: expected a SQLite file path or a postgresql:// URL")
    elif db:
        cfg.db = path_of("db")
    elif base != Path.cwd():
        cfg.db = base / cfg.db
    sync = str(merged.get("db_synchronous") or "full").lower()
    if sync not in ("full", "normal"):
        raise ConfigError("db_synchronous: expected full or normal")
    cfg.db_synchronous = "full" if sync == "full" else "normal"
    if merged.get("token_file"):
        cfg.token_file = path_of("token_file")
        cfg.token = _read_secret(cfg.token_file, "token_file")
    if merged.get("web_config"):
        cfg.web_config_path = path_of("web_config")
        try:
            cfg.web_config = load_web_config(cfg.web_config_path)
        except WebConfigError as exc:
            raise ConfigError(str(exc)) from None
    cfg.workers = int(_number(merged.get("workers", cfg.workers), "workers", minimum=1, integer=True))
    cfg.max_body_bytes = int(
        _number(merged.get("max_body_bytes", cfg.max_body_bytes), "max_body_bytes", minimum=1024, integer=True)
    )
    cfg.investigation_timeout_seconds = _number(
        merged.get("investigation_timeout_seconds", cfg.investigation_timeout_seconds),
        "investigation_timeout_seconds",
        minimum=0.1,
    )
    cfg.max_attempts = int(
        _number(merged.get("max_attempts", cfg.max_attempts), "max_attempts", minimum=1, integer=True)
    )
    cfg.sinks = _sinks(merged.get("sinks"), base)
    retry = _mapping(merged.get("sink_retry"), "sink_retry")
    _unknown(retry, _RETRY_KEYS, "sink_retry")
    cfg.sink_retry_initial_seconds = _number(
        retry.get("initial_seconds", cfg.sink_retry_initial_seconds), "sink_retry.initial_seconds", minimum=0.01
    )
    cfg.sink_retry_max_seconds = _number(
        retry.get("max_seconds", cfg.sink_retry_max_seconds), "sink_retry.max_seconds", minimum=0.01
    )
    if merged.get("public_url"):
        cfg.public_url = _url(merged["public_url"], "public_url")
    cfg.actions = _actions(merged.get("actions"), base)
    cfg.reconcile_interval_seconds = _number(
        merged.get("reconcile_interval_seconds", cfg.reconcile_interval_seconds),
        "reconcile_interval_seconds",
        minimum=0,
    )
    cfg.reconcile_stale_after_seconds = _number(
        merged.get("reconcile_stale_after_seconds", cfg.reconcile_stale_after_seconds),
        "reconcile_stale_after_seconds",
        minimum=1,
    )
    cfg.incident_window_seconds = _number(
        merged.get("incident_window_seconds", cfg.incident_window_seconds),
        "incident_window_seconds",
        minimum=0,
    )
    try:
        cfg.prometheus_auth = basic_auth(merged, "prometheus_basic_auth")
        cfg.alertmanager_auth = basic_auth(merged, "alertmanager_basic_auth")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cfg.investigation = _investigation_keys(merged)
    return cfg


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> AgentConfig:
    raw, base = load_file(path)
    return build_config(raw, base, overrides)


def investigation_mapping(cfg: AgentConfig) -> dict[str, Any]:
    """What `InvestigationConfig.from_mapping` receives: the investigation's own keys, as given."""
    return dict(cfg.investigation)
