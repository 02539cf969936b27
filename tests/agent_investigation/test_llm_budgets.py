"""Budgets of the LLM loop (issue #18 section 2): tool calls per turn, the wall-clock budget
between tool calls, repeated calls, the context window, and capped tool-call arguments.

Real Prometheus (the session's live cluster), the real `openai` client against the scripted
OpenAI-compatible server; slow tools come from a latency proxy in front of the real Prometheus.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_webhook.investigation import Investigation
from agent_webhook.investigation.llm import BUDGET_NOTE, DROPPED_NOTE, REPEAT_NOTE, TokenCounter
from tests.agent_investigation.conftest import LiveCluster
from tests.agent_investigation.test_llm_loop import ANSWER, tool_messages, xid48_alert
from tests.fakes.openai_server import FakeOpenAIServer, Turn, text, tool_calls
from tests.fakes.slow_proxy import SlowProxy

pytestmark = pytest.mark.slow


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for server in started:
        server.stop()


def llm_evidence(dx: Any, tool: str) -> int:
    return sum(1 for e in dx.evidence if e.tool == tool)


async def test_forty_parallel_tool_calls_stop_at_the_budget(live_cluster: LiveCluster, servers: list[Any]) -> None:
    """40 calls in one turn, each ~1 s (a slow Prometheus), against a 5 s budget, with no per-turn
    cap in the way: the loop stops calling tools at the budget's tool share and answers."""
    proxy = SlowProxy(live_cluster.prometheus.url).start()
    servers.append(proxy)

    def script(body: dict[str, Any], index: int) -> Turn:
        if index == 0:
            proxy.delay = 1.0  # the triage's evidence was fast; the model's tools are slow
            return tool_calls(*[("prometheus_query", {"query": f"up + {i}"}) for i in range(40)])
        return text(json.dumps(ANSWER))

    llm = FakeOpenAIServer(script).start()
    servers.append(llm)
    cfg = live_cluster.config(
        prometheus_url=proxy.base_url,
        llm={"base_url": llm.url, "model": "fake-model", "budget_seconds": 5, "max_tool_calls_per_turn": 64},
    )
    inv = Investigation(cfg)
    dx = await inv.investigate(xid48_alert())
    await inv.close()

    assert dx.timings["llm_seconds"] < 6.0, dx.timings  # was 32 s: every call ran
    assert llm_evidence(dx, "prometheus_query") <= 5
    assert dx.llm_used and dx.summary == ANSWER["summary"]
    assert dx.triage_rule == "xid:48+dbe"
    results = tool_messages(llm.requests[1])
    assert len(results) == 40 and results[-1] == BUDGET_NOTE
    assert "tools" not in llm.requests[1]  # the rest of the budget is the final answer's


async def test_tool_calls_per_turn_are_capped(live_cluster: LiveCluster, servers: list[Any]) -> None:
    llm = FakeOpenAIServer(
        [tool_calls(*[("prometheus_query", {"query": f"up + {i}"}) for i in range(40)]), text(json.dumps(ANSWER))]
    ).start()
    servers.append(llm)
    inv = Investigation(live_cluster.config(llm={"base_url": llm.url, "model": "fake-model"}))
    dx = await inv.investigate(xid48_alert())
    await inv.close()
    assert llm_evidence(dx, "prometheus_query") == 8  # the default max_tool_calls_per_turn
    second = llm.requests[1]
    assert len(tool_messages(second)) == 8
    assert len(second["messages"][-9]["tool_calls"]) == 8  # the assistant turn as sent back: 8 calls
    assert "32 more tool call(s) of this turn were not run" in tool_messages(second)[-1]
    assert dx.llm_used


async def test_identical_tool_calls_run_once(live_cluster: LiveCluster, servers: list[Any]) -> None:
    proxy = SlowProxy(live_cluster.prometheus.url).start()
    servers.append(proxy)
    counted: dict[str, int] = {}

    def script(body: dict[str, Any], index: int) -> Turn:
        counted.setdefault(f"before {index}", proxy.count)
        if index == 0:
            return tool_calls(
                ("slurm_node", {"node": "gpu-e02"}),
                ("gpu_detail", {"node": "gpu-e02", "gpu": "1"}),
                ("slurm_node", {"node": "gpu-e02"}),
                ("gpu_detail", {"gpu": "1", "node": "gpu-e02"}),  # same arguments, other order
            )
        if index == 1:
            return tool_calls(("slurm_node", {"node": "gpu-e02"}), ("gpu_detail", {"node": "gpu-e02", "gpu": "1"}))
        return text(json.dumps(ANSWER))

    llm = FakeOpenAIServer(script).start()
    servers.append(llm)
    inv = Investigation(
        live_cluster.config(prometheus_url=proxy.base_url, llm={"base_url": llm.url, "model": "fake-model"})
    )
    dx = await inv.investigate(xid48_alert())
    await inv.close()
    # Real requests reaching Prometheus during the model's turns: slurm_node makes 4, gpu_detail 1,
    # once each; the four repeats made none.
    assert counted["before 2"] - counted["before 0"] == 5, proxy.paths[counted["before 0"] :]
    first, second = tool_messages(llm.requests[1]), tool_messages(llm.requests[2])
    assert first[2].startswith(REPEAT_NOTE) and first[3].startswith(REPEAT_NOTE)
    assert first[2][len(REPEAT_NOTE) :] == first[0]
    assert len(second) == 6 and all(t.startswith(REPEAT_NOTE) for t in second[4:])
    assert dx.llm_used


async def test_context_too_long_shrinks_and_retries_once(live_cluster: LiveCluster, servers: list[Any]) -> None:
    """The agent believes in a 32k context; the server's model has 6000 tokens and says so in
    vLLM's 400. The loop shrinks to the limit it read, retries once, and the breaker (one failure
    opens it here) does not count the refusal."""
    big = [
        ("prometheus_query", {"query": "test_many_series"}),
        ("prometheus_query", {"query": "test_long_label"}),
        ("slurm_cluster", {}),
        ("gpu_detail", {"node": "gpu-e02"}),
        ("prometheus_query", {"query": 'test_many_series or {__name__="up"}'}),
    ]
    llm = FakeOpenAIServer([tool_calls(*big), text(json.dumps(ANSWER))], max_model_len=6000).start()
    servers.append(llm)
    inv = Investigation(live_cluster.config(llm={"base_url": llm.url, "model": "fake-model", "breaker_failures": 1}))
    dx = await inv.investigate(xid48_alert())
    assert llm.rejected == 1 and len(llm.requests) == 2
    assert dx.llm_used and dx.summary == ANSWER["summary"] and dx.degraded == []
    assert dx.llm_failures == 0
    assert inv.llm is not None and inv.llm.breaker.state == "closed" and inv.llm.breaker.consecutive_failures == 0
    assert llm.sizes[2] < llm.sizes[1]  # the retry was shrunk
    assert inv.llm.context_tokens == 6000  # and later runs start from the limit the server named
    second = await inv.investigate(xid48_alert())
    await inv.close()
    assert second.llm_used and llm.rejected == 1  # fitted up front this time


async def test_old_turns_are_truncated_to_fit(live_cluster: LiveCluster, servers: list[Any]) -> None:
    """A small context (4096 tokens) configured as such: turn after turn of large tool results
    never overflows it; earlier results give way."""

    def script(body: dict[str, Any], index: int) -> Turn:
        if index < 4:
            return tool_calls(
                ("prometheus_query", {"query": f"test_many_series + {index}"}),
                ("prometheus_query", {"query": f"test_long_label + {index}"}),
            )
        return text(json.dumps(ANSWER))

    llm = FakeOpenAIServer(script, max_model_len=4096).start()
    servers.append(llm)
    cfg = {"base_url": llm.url, "model": "fake-model", "context_tokens": 4096, "max_tokens": 512}
    inv = Investigation(live_cluster.config(llm=cfg))
    dx = await inv.investigate(xid48_alert())
    await inv.close()
    assert llm.rejected == 0 and len(llm.requests) == 5
    assert dx.llm_used
    last = tool_messages(llm.requests[4])
    assert DROPPED_NOTE in last[:6] and DROPPED_NOTE not in last[-2:]  # the latest turn kept


async def test_huge_tool_arguments_stay_out_of_findings_and_requests(
    live_cluster: LiveCluster, servers: list[Any]
) -> None:
    five_mb = "x" * 5_000_000
    llm = FakeOpenAIServer(
        [
            tool_calls(("prometheus_query", {"query": five_mb}), ("slurm_node", five_mb)),
            text(json.dumps(ANSWER)),
        ]
    ).start()
    servers.append(llm)
    inv = Investigation(live_cluster.config(llm={"base_url": llm.url, "model": "fake-model"}))
    dx = await inv.investigate(xid48_alert())
    await inv.close()
    assert dx.llm_used
    assert len(json.dumps(dataclasses.asdict(dx))) < 100_000
    assert max(llm.sizes[1:]) < 100_000, llm.sizes
    rejected = [e for e in dx.evidence if not e.ok]
    assert len(rejected) == 2 and all("longer than 4096 characters" in e.excerpt for e in rejected)


def test_a_tokenizer_file_counts_tokens_exactly(tmp_path: Path) -> None:
    """llm.tokenizer_file with the `tokenizers` package: the model's own count, not the estimate."""
    import tokenizers  # a test dependency (setup.cfg [test]): no skip

    vocab = {"[UNK]": 0, "gpu": 1, "xid": 2, "79": 3}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    counter = TokenCounter(str(path))
    assert counter.exact
    text = "gpu xid 79 " * 100  # 300 words: 300 tokens; the estimate says 440
    assert counter.count(text) == 300
    assert TokenCounter(None).count(text) == 440
    trimmed = counter.trim(text, 50)
    assert counter.count(trimmed) <= 50 < counter.count(text)
