"""A model's sampling defaults on a real neuron and gateway: a request that sends no
temperature (as Claude Code sends none) takes the one the model's spec sets."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from procs import BUNDLED, Gateway, Neuron, gateway_config

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name a large city in Europe."}]
TOKENS = 16
# models.toml: "greedy" as loaded on the node (which reports its defaults), and a profile
# loaded nowhere, whose defaults are models.toml's own.
MODELS = f"""
[[models]]
id = "greedy"
source = "{BUNDLED}"

[[models]]
id = "cool"
source = "{BUNDLED}"
sampling = {{ temperature = 0.3, top_k = 20 }}
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    process = Neuron(tmp_path_factory.mktemp("sampling"), "sampling", [])
    spec = {
        "id": "greedy",
        "source": BUNDLED,
        "context_length": 1024,
        "max_batch": 1,
        "prefix_cache": False,  # a reused KV cache may part from a fresh one at a near tie
        "sampling": {"temperature": 0},
    }
    answer = httpx.post(process.url + "/models/load", json=spec, timeout=60)
    assert answer.status_code == 200, answer.text
    yield process
    process.stop()


def _set(defaults: dict | None) -> dict:
    return {k: v for k, v in (defaults or {}).items() if v is not None}


def test_a_request_without_temperature_takes_the_models_default(node: Neuron) -> None:
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)

    def ask(**sampling: float) -> str | None:
        answer = client.chat.completions.create(
            model="greedy", messages=QUESTION, max_tokens=TOKENS, **sampling
        )
        return answer.choices[0].message.content

    defaulted = [ask(), ask()]
    assert defaulted == [ask(temperature=0)] * 2  # greedy, as if the request asked for it


def test_status_and_models_show_the_defaults(node: Neuron, tmp_path: Path) -> None:
    assert _set(node.model("greedy")["sampling_defaults"]) == {"temperature": 0}
    gateway = Gateway(tmp_path, gateway_config(node), MODELS, {"greedy"})
    try:
        listed = httpx.get(gateway.url + "/v1/models", timeout=10).json()["data"]
        defaults = {m["id"]: _set(m["sampling_defaults"]) for m in listed}
        assert defaults == {"greedy": {"temperature": 0}, "cool": {"temperature": 0.3, "top_k": 20}}

        # An Anthropic request without temperature reaches the node without one too.
        body = {"model": "greedy", "max_tokens": TOKENS, "messages": QUESTION}
        texts = [
            httpx.post(gateway.url + "/v1/messages", json=body, timeout=60).json()["content"][0][
                "text"
            ]
            for _ in range(2)
        ]
        client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)
        greedy = client.chat.completions.create(
            model="greedy", messages=QUESTION, max_tokens=TOKENS, temperature=0
        )
        assert texts == [greedy.choices[0].message.content] * 2
    finally:
        gateway.stop()
