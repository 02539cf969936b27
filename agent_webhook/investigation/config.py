"""Investigation settings (the `prometheus_url`, `llm`, `slurm`, ... keys of agent.yml), validated."""

from __future__ import annotations

import base64
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_webhook.investigation.toolsets import DeclaredTool, load_toolsets
from gpu_watchdog_core.logs import has_userinfo, redact
from gpu_watchdog_core.sections import reject_unknown

SLURM_MODES = ("metrics", "scontrol")
# The agent.yml keys this package reads (the service passes these through to from_mapping).
CONFIG_KEYS = (
    "prometheus_url",
    "alertmanager_url",
    "prometheus_basic_auth",
    "alertmanager_basic_auth",
    "llm",
    "slurm",
    "allowed_urls",
    "tool_timeout_seconds",
    "tool_output_chars",
    "max_series",
    "max_points",
    "toolsets",
)


@dataclass(frozen=True)
class BasicAuthConfig:
    """Basic auth toward a Prometheus or Alertmanager behind a web config (`--web.config.file`).

    The password is read from `password_file` when the configuration is loaded; it never goes
    into a URL, a repr or a log line.
    """

    username: str
    password_file: str
    password: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        """The Authorization header, built per request. A header rather than aiohttp's `auth=`
        (deprecated in aiohttp 3.12+); UTF-8 as Go clients send it (exporter-toolkit compares the
        raw bytes), not aiohttp's latin-1 default."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}


AUTH_KEYS = {"username", "password_file"}


def basic_auth(raw: Mapping[str, Any], key: str) -> BasicAuthConfig | None:
    """`key` of agent.yml (`{username, password_file}`), validated, with the password read; None when unset."""
    value = raw.get(key)
    if value is None or value == {}:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a mapping with username and password_file, got {type(value).__name__}")
    _known(value, key, AUTH_KEYS)
    username = value.get("username")
    if not isinstance(username, str) or not username or ":" in username:
        raise ValueError(f"{key}.username: expected a user name (without ':')")
    path = value.get("password_file")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{key}.password_file: expected a file path (the password is never put in agent.yml)")
    try:
        password = Path(path).read_text(encoding="utf-8").strip()
    except PermissionError:
        raise ValueError(
            f"{key}.password_file: cannot read {path}: permission denied (a secret, readable by the agent's "
            "user only: run as that user or root, e.g. with sudo)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{key}.password_file: cannot read {path}: {reason}") from None
    if not password:
        raise ValueError(f"{key}.password_file: {path} is empty")
    return BasicAuthConfig(username=username, password_file=path, password=password)


@dataclass(frozen=True)
class LLMConfig:
    base_url: str | None = None
    model: str | None = None
    api_key_file: str | None = None
    api_key_env: str | None = None
    timeout_seconds: float = 60.0
    max_steps: int = 8
    budget_seconds: float = 180.0
    temperature: float = 0.0
    max_tokens: int = 2048  # per completion: bounds generation time as much as the timeout does
    # Consecutive failures that open the circuit breaker, and how long it stays open.
    breaker_failures: int = 3
    breaker_open_seconds: float = 60.0
    # Tool calls run per model turn (the rest are answered "not run"): 40 parallel calls in one
    # turn must not outlast the budget.
    max_tool_calls_per_turn: int = 8
    # The model's context window (vLLM's --max-model-len): prompts are fitted into it.
    context_tokens: int = 32768
    # The model's tokenizer.json, to count tokens exactly (needs the `tokenizers` package);
    # without it tokens are estimated conservatively from the length.
    tokenizer_file: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    def api_key(self) -> str:
        """The key from api_key_file or api_key_env; vLLM without --api-key accepts any string."""
        if self.api_key_file:
            try:
                key = Path(self.api_key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"llm.api_key_file: cannot read {self.api_key_file}: {exc.strerror or exc}") from None
            if key:
                return key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
            if key:
                return key
        return "EMPTY"


@dataclass(frozen=True)
class SlurmConfig:
    mode: str = "metrics"
    bin_dir: str | None = None
    command_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class InvestigationConfig:
    prometheus_url: str | None = None
    alertmanager_url: str | None = None
    prometheus_auth: BasicAuthConfig | None = None
    alertmanager_auth: BasicAuthConfig | None = None
    llm: LLMConfig = field(default_factory=LLMConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    allowed_urls: tuple[str, ...] = ()
    tool_timeout_seconds: float = 10.0
    tool_output_chars: int = 6000
    max_series: int = 50
    max_points: int = 500
    # Read-only PromQL tools declared in YAML files (agent_webhook.investigation.toolsets).
    toolsets: tuple[DeclaredTool, ...] = ()

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> InvestigationConfig:
        """Build from agent.yml's mapping; unknown keys of other components are ignored."""
        raw = raw or {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"investigation config must be a mapping, got {type(raw).__name__}")
        llm_raw = _mapping(raw, "llm")
        slurm_raw = _mapping(raw, "slurm")
        # These sections are ours alone: a misspelt key is an error, not a silent default.
        _known(llm_raw, "llm", LLM_KEYS)
        _known(slurm_raw, "slurm", SLURM_KEYS)
        mode = slurm_raw.get("mode", "metrics")
        if mode not in SLURM_MODES:
            raise ValueError(f"slurm.mode must be one of {', '.join(SLURM_MODES)}, got {mode!r}")
        bin_dir = _opt_str(slurm_raw, "bin_dir", "slurm.bin_dir")
        if bin_dir is not None and not Path(bin_dir).is_dir():
            raise ValueError(f"slurm.bin_dir: {bin_dir} is not a directory")
        toolset_files = raw.get("toolsets") or []
        if not isinstance(toolset_files, list) or not all(isinstance(f, str) for f in toolset_files):
            raise ValueError("toolsets must be a list of YAML file paths")
        toolsets = tuple(load_toolsets(toolset_files))
        allowed = raw.get("allowed_urls") or []
        if not isinstance(allowed, list):
            raise ValueError("allowed_urls must be a list of http(s) URLs")
        llm = LLMConfig(
            base_url=_url(llm_raw.get("base_url"), "llm.base_url"),
            model=_opt_str(llm_raw, "model", "llm.model"),
            api_key_file=_opt_str(llm_raw, "api_key_file", "llm.api_key_file"),
            api_key_env=_opt_str(llm_raw, "api_key_env", "llm.api_key_env"),
            timeout_seconds=_number(llm_raw, "timeout_seconds", "llm.timeout_seconds", 60.0, 0.1, 3600),
            max_steps=int(_number(llm_raw, "max_steps", "llm.max_steps", 8, 1, 50, integer=True)),
            budget_seconds=_number(llm_raw, "budget_seconds", "llm.budget_seconds", 180.0, 1, 7200),
            temperature=_number(llm_raw, "temperature", "llm.temperature", 0.0, 0, 2),
            max_tokens=int(_number(llm_raw, "max_tokens", "llm.max_tokens", 2048, 16, 131072, integer=True)),
            breaker_failures=int(_number(llm_raw, "breaker_failures", "llm.breaker_failures", 3, 1, 100, integer=True)),
            breaker_open_seconds=_number(llm_raw, "breaker_open_seconds", "llm.breaker_open_seconds", 60.0, 0, 86400),
            max_tool_calls_per_turn=int(
                _number(llm_raw, "max_tool_calls_per_turn", "llm.max_tool_calls_per_turn", 8, 1, 64, integer=True)
            ),
            context_tokens=int(
                _number(llm_raw, "context_tokens", "llm.context_tokens", 32768, 1024, 10_000_000, integer=True)
            ),
            tokenizer_file=_opt_str(llm_raw, "tokenizer_file", "llm.tokenizer_file"),
        )
        if llm.base_url and not llm.model:
            raise ValueError("llm.model is required when llm.base_url is set (the model name vLLM serves)")
        if llm.context_tokens < llm.max_tokens + 1024:
            raise ValueError(
                f"llm.context_tokens ({llm.context_tokens}) must leave at least 1024 tokens of prompt beside "
                f"llm.max_tokens ({llm.max_tokens})"
            )
        if llm.tokenizer_file is not None and not Path(llm.tokenizer_file).is_file():
            raise ValueError(f"llm.tokenizer_file: {llm.tokenizer_file} is not a file (the model's tokenizer.json)")
        return cls(
            prometheus_url=_server_url(raw, "prometheus_url", "prometheus_basic_auth"),
            alertmanager_url=_server_url(raw, "alertmanager_url", "alertmanager_basic_auth"),
            prometheus_auth=basic_auth(raw, "prometheus_basic_auth"),
            alertmanager_auth=basic_auth(raw, "alertmanager_basic_auth"),
            llm=llm,
            slurm=SlurmConfig(
                mode=str(mode),
                bin_dir=bin_dir,
                command_timeout_seconds=_number(
                    slurm_raw, "command_timeout_seconds", "slurm.command_timeout_seconds", 10.0, 0.1, 600
                ),
            ),
            allowed_urls=tuple(str(_url(u, "allowed_urls entry")) for u in allowed),
            toolsets=toolsets,
            tool_timeout_seconds=_number(raw, "tool_timeout_seconds", "tool_timeout_seconds", 10.0, 0.1, 600),
            tool_output_chars=int(
                _number(raw, "tool_output_chars", "tool_output_chars", 6000, 200, 200_000, integer=True)
            ),
            max_series=int(_number(raw, "max_series", "max_series", 50, 1, 10_000, integer=True)),
            max_points=int(_number(raw, "max_points", "max_points", 500, 2, 11_000, integer=True)),
        )


LLM_KEYS = {
    "base_url",
    "model",
    "api_key_file",
    "api_key_env",
    "timeout_seconds",
    "max_steps",
    "budget_seconds",
    "temperature",
    "max_tokens",
    "breaker_failures",
    "breaker_open_seconds",
    "max_tool_calls_per_turn",
    "context_tokens",
    "tokenizer_file",
}
SLURM_KEYS = {"mode", "bin_dir", "command_timeout_seconds"}


def _known(section: Mapping[str, Any], name: str, keys: set[str]) -> None:
    reject_unknown(section, keys, name, ValueError, show_known=True)


def _mapping(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a mapping, got {type(value).__name__}")
    return value


def _opt_str(raw: Mapping[str, Any], key: str, name: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _number(  # noqa: PLR0917 - one call shape, read at a glance
    raw: Mapping[str, Any], key: str, name: str, default: float, low: float, high: float, integer: bool = False
) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


def _server_url(raw: Mapping[str, Any], key: str, auth_key: str) -> str | None:
    url = _url(raw.get(key), key)
    # Credentials in a URL end up in logs and evidence; they belong in a password file.
    if url is not None and has_userinfo(url):
        raise ValueError(f"{key} must not carry credentials: set {auth_key} (username, password_file) instead")
    return url


def _url(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a URL string, got {type(value).__name__}")
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host, got {redact(value)!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"{name} must not carry a query or fragment: {redact(value)!r}")
    return value.rstrip("/")
