"""What every Slurm collector shares: a name, the source, and its commands' last good data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

from exporters.slurm.source import CommandState, SlurmSource


class NoData(RuntimeError):
    """The command this collector needs has never succeeded: nothing to serve yet."""


class SourceCollector:
    name = ""

    def __init__(self, source: SlurmSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        self.source.begin(self.name)
        return list(self.families())

    def families(self) -> Iterable[Metric]:  # pragma: no cover - overridden
        return []

    def state(self, command: str) -> CommandState:
        state = self.source.get(command)
        if state.data is None:
            raise NoData(f"{command} has not succeeded yet: {state.error or 'not run'}")
        return state

    def items(self, command: str) -> list[Any]:
        data = self.state(command).data
        return list(data.items) if data is not None else []
