"""One JSON line per event on stdout (the service logs to stderr), for piping or journald."""

from __future__ import annotations

import json
import sys
from typing import Any

from agent_webhook.sinks import redacted


class StdoutSink:
    def __init__(self, name: str = "stdout") -> None:
        self.name = name

    async def post(self, event: str, finding: dict[str, Any], ref: str | None) -> str | None:
        sys.stdout.write(json.dumps(redacted({"event": event, "finding": finding})) + "\n")
        sys.stdout.flush()
        return ref
