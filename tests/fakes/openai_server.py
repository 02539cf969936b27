"""A local OpenAI-compatible chat-completions server that plays scripted conversations.

The real `openai` client talks to it over HTTP, so tool calls, malformed arguments, HTTP
errors and slow answers exercise the same client code as vLLM would. Every request body is
recorded (`requests`) so tests can assert on prompts and on the tool schemas offered.

A script is a list of turns, played in order (the last one repeats), or a callable
`(request_body, index) -> turn`. A turn is `text(...)`, `tool_calls(...)`, `http_error(...)`
or `delay(seconds, turn)`.

With `max_model_len`, the server refuses requests longer than the model's context the way vLLM
does: HTTP 400 with vLLM's error body and message (counting `CHARS_PER_TOKEN` characters of the
messages and tool schemas as a token), before the script is consulted (`rejected` counts them).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.threaded_server import ThreadedServer


@dataclass
class Turn:
    content: str | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)  # (name, raw arguments text)
    status: int = 200
    error_body: str = ""
    delay: float = 0.0


def text(content: str) -> Turn:
    return Turn(content=content)


def tool_calls(*calls: tuple[str, Any]) -> Turn:
    """Each call is (name, arguments): a dict is JSON-encoded, a str is sent verbatim (malformed)."""
    return Turn(calls=[(name, args if isinstance(args, str) else json.dumps(args)) for name, args in calls])


def http_error(status: int, message: str = "error") -> Turn:
    return Turn(status=status, error_body=json.dumps({"error": {"message": message, "type": "server_error"}}))


def delay(seconds: float, turn: Turn) -> Turn:
    turn.delay = seconds
    return turn


Script = Sequence[Turn] | Callable[[dict[str, Any], int], Turn]
CHARS_PER_TOKEN = 4


def vllm_context_error(max_model_len: int, input_tokens: int, max_tokens: int | None) -> dict[str, Any]:
    """vLLM's answer to a prompt over max_model_len (serving_engine's length check, vLLM >= 0.8:
    the OpenAI-style nested `error`, type BadRequestError, code 400)."""
    if input_tokens >= max_model_len:
        message = (
            f"This model's maximum context length is {max_model_len} tokens. However, your request has "
            f"{input_tokens} input tokens. Please reduce the length of the input messages."
        )
    else:
        message = (
            f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum context "
            f"length is {max_model_len} tokens and your request has {input_tokens} input tokens "
            f"({max_tokens} > {max_model_len} - {input_tokens})."
        )
    return {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}


class FakeOpenAIServer(ThreadedServer):
    def __init__(self, script: Script, model: str = "fake-model", max_model_len: int | None = None) -> None:
        self.script = script
        self.model = model
        self.max_model_len = max_model_len
        self.rejected = 0  # requests refused as over max_model_len
        self.sizes: list[int] = []  # bytes of every request body, in order
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        super().__init__(app)

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    def _turn(self, body: dict[str, Any]) -> Turn:
        with self._lock:
            self.requests.append(body)
            index = len(self.requests) - 1
        if callable(self.script):
            return self.script(body, index)
        return self.script[min(index, len(self.script) - 1)]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def input_tokens(self, body: dict[str, Any]) -> int:
        text = json.dumps(body.get("messages", [])) + json.dumps(body.get("tools") or [])
        return len(text) // CHARS_PER_TOKEN

    async def _chat(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        with self._lock:
            self.sizes.append(len(raw))
        if self.max_model_len is not None:
            used, wanted = self.input_tokens(body), body.get("max_tokens")
            if used >= self.max_model_len or used + int(wanted or 0) > self.max_model_len:
                with self._lock:
                    self.rejected += 1
                return web.json_response(vllm_context_error(self.max_model_len, used, wanted), status=400)
        turn = self._turn(body)
        if turn.delay:
            await asyncio.sleep(turn.delay)
        if turn.status != 200:
            return web.Response(status=turn.status, text=turn.error_body, content_type="application/json")
        message: dict[str, Any] = {"role": "assistant", "content": turn.content}
        finish = "stop"
        if turn.calls:
            message["tool_calls"] = [
                {"id": f"call_{next(self._ids)}", "type": "function", "function": {"name": n, "arguments": a}}
                for n, a in turn.calls
            ]
            finish = "tool_calls"
        return web.json_response(
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        )

    # helpers for assertions

    def tool_names(self, index: int) -> list[str]:
        return [t["function"]["name"] for t in self.requests[index].get("tools") or []]

    def all_prompt_text(self) -> str:
        return "\n".join(str(m.get("content") or "") for r in self.requests for m in r.get("messages", []))
