"""The KV cache's disk tier: a conversation stays cached across an unload and reload,
and across a restart of the neuron; another KV setting never reads it."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from procs import BUNDLED, Neuron

pytestmark = pytest.mark.slow

SPEC = {"id": "disk", "source": BUNDLED, "context_length": 2048, "max_batch": 2}
SYSTEM = (
    "You are a patient guide to the rivers of Europe. "
    + "Answer briefly, name the countries a river crosses, and say where it ends. " * 12
)


def load(node: Neuron, **fields: object) -> None:
    answer = httpx.post(node.url + "/models/load", json={**SPEC, **fields}, timeout=60)
    assert answer.status_code == 200, answer.text


def ask(node: Neuron, messages: list[dict], model: str = "disk"):
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=12
    )


def test_a_conversation_stays_cached_across_a_reload_and_a_restart(tmp_path: Path) -> None:
    kv = tmp_path / "kv"
    node = Neuron(tmp_path, "disk-a", extra=["--kv-cache-dir", str(kv)])
    try:
        load(node)
        history = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Tell me about the Danube."},
        ]
        first = ask(node, history)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        history += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And the Rhine?"},
        ]
        assert httpx.post(node.url + "/models/unload", json={"id": "disk"}, timeout=30)
        assert list(kv.glob("*/*.kv")), "the unload kept nothing on disk"
        load(node)
        second = ask(node, history)
        # the whole first turn but the answer's last token comes from disk
        assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens

        # another KV type is another cache: the same prompt starts cold
        load(node, id="disk-q8", kv_cache_type="q8_0")
        other = ask(node, history, model="disk-q8")
        assert other.usage.prompt_tokens_details.cached_tokens == 0
        assert len(list(kv.iterdir())) == 2  # a folder per model file and KV setting
    finally:
        node.stop()

    history += [
        {"role": "assistant", "content": second.choices[0].message.content},
        {"role": "user", "content": "Which is longer?"},
    ]
    node = Neuron(tmp_path, "disk-b", extra=["--kv-cache-dir", str(kv)])
    try:
        load(node)
        third = ask(node, history)
        assert third.usage.prompt_tokens_details.cached_tokens >= second.usage.prompt_tokens
    finally:
        node.stop()


def test_the_nodes_host_budget_reaches_the_engines(tmp_path: Path) -> None:
    """``--kv-host-cache-mb`` is shared out among models, and an engine given nothing
    keeps no host tier: a conversation whose slot another took starts cold."""
    node = Neuron(tmp_path, "host-budget", extra=["--kv-host-cache-mb", "300"])
    try:
        load(node, id="first", max_batch=1, kv_host_cache_mb=300)
        load(node, id="second", max_batch=1)  # the budget is spent: no host tier
        assert node.model("first")["kv_host_cache_mb"] == 300
        assert node.model("second")["kv_host_cache_mb"] == 0

        def conversation(topic: str) -> list[dict]:
            return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": topic}]

        cached = {}
        for model in ("first", "second"):
            danube, rhine = conversation("The Danube?"), conversation("The Rhine?")
            ask(node, danube, model)
            ask(node, rhine, model)  # takes the one slot: the Danube's KV leaves it
            danube += [
                {"role": "assistant", "content": "It is long."},
                {"role": "user", "content": "Where does it end?"},
            ]
            again = ask(node, danube, model)
            cached[model] = again.usage.prompt_tokens_details.cached_tokens
        # the shared system prompt is in the slot either way; only the host tier has more
        assert cached["first"] > cached["second"], cached
    finally:
        node.stop()
