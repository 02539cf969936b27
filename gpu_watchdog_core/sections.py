"""Checks every YAML config reader shares (agent.yml, web config, sim fault files): a section is
a mapping, and has no keys the reader does not know, so a typo fails loudly instead of being
ignored. Each reader passes its own error class, so its callers catch what they always caught."""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any


def mapping_section(value: Any, where: str, error: type[Exception]) -> dict[str, Any]:
    """`value` as a mapping: absent (None) is empty; anything else but a mapping is an `error`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def reject_unknown(
    section: Mapping[Any, Any],
    allowed: Set[str],
    where: str,
    error: type[Exception],
    *,
    noun: str = "key",
    show_known: bool = False,
) -> None:
    """An `error` naming every key of `section` not in `allowed` (sorted as text: YAML keys may be numbers).

    With `show_known` the message lists the allowed keys too, for sections with many of them.
    """
    unknown = sorted(str(k) for k in set(section) - allowed)
    if unknown:
        known = f"; known: {', '.join(sorted(allowed))}" if show_known else ""
        raise error(f"{where}: unknown {noun}(s) {', '.join(unknown)}{known}")
