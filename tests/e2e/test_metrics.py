"""Per-request metrics, headers and log lines, from a known set of real requests.

A gateway and a neuron of their own (so no other test's requests are counted):
both dialects, streaming and not, one error. The scraped metrics are parsed
with prometheus_client's parser and must hold exactly those counts and token sums.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from procs import BUNDLED, MODEL, Gateway, Neuron, gateway_config, wait_for

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Say hello in five words."}]


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)]."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def scrape_when(url: str, name: str, count: float) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A scrape once ``name`` totals ``count``: a request is counted when its response
    has ended, a moment after the client has the answer (a bounded wait, not a timing
    check); the last scrape when it never does, for the assertions to report."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(url)
        if total(samples[name]) >= count or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def total(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(v for l, v in samples if all(l.get(k) == x for k, x in labels.items()))  # noqa: E741


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("metrics")
    node = Neuron(tmp, "m1", [f"{MODEL}={BUNDLED}"])
    gateway = Gateway(tmp, gateway_config(node), None, {MODEL})
    yield gateway, node
    gateway.stop()
    node.stop()


def test_a_known_set_of_requests_is_counted_exactly(fleet: tuple[Gateway, Neuron]) -> None:
    gateway, node = fleet
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="none", max_retries=0)
    greedy = {"temperature": 0, "max_tokens": 16}
    completion_tokens = prompt_tokens = 0

    plain = oai.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, extra_headers={"x-request-id": "req-known-1"}, **greedy
    )
    assert plain.headers["x-request-id"] == "req-known-1"
    assert plain.headers["x-cortex-node"] == "m1"
    assert float(plain.headers["x-cortex-overhead-ms"]) >= 0
    usage = plain.parse().usage
    completion_tokens += usage.completion_tokens
    prompt_tokens += usage.prompt_tokens

    streamed = oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        **greedy,
    )
    chunks = list(streamed)
    assert chunks[-1].usage is not None
    completion_tokens += chunks[-1].usage.completion_tokens
    prompt_tokens += chunks[-1].usage.prompt_tokens

    message = claude.messages.create(model=MODEL, messages=QUESTION, max_tokens=16)
    completion_tokens += message.usage.output_tokens
    prompt_tokens += message.usage.input_tokens
    with claude.messages.stream(model=MODEL, messages=QUESTION, max_tokens=16) as stream:
        final = stream.get_final_message()
    completion_tokens += final.usage.output_tokens
    prompt_tokens += final.usage.input_tokens

    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=QUESTION)

    metrics = scrape_when(
        f"http://127.0.0.1:{gateway.metrics_port}/metrics", "cortex_requests_total", 5
    )
    requests = metrics["cortex_requests_total"]
    assert total(requests, dialect="openai", status="200", model=MODEL, node="m1") == 2
    assert total(requests, dialect="anthropic", status="200", model=MODEL, node="m1") == 2
    assert total(requests, dialect="openai", status="404") == 1
    assert total(requests) == 5
    assert total(metrics["cortex_completion_tokens_total"], model=MODEL) == completion_tokens
    assert total(metrics["cortex_prompt_tokens_total"], model=MODEL) == prompt_tokens
    for histogram in (
        "cortex_request_duration_seconds_count",
        "cortex_time_to_first_token_seconds_count",
    ):
        assert total(metrics[histogram], model=MODEL) == 4, histogram
    assert total(metrics["cortex_request_duration_seconds_count"]) == 5  # the 404 too
    assert total(metrics["cortex_output_tokens_per_second_count"], model=MODEL) == 4
    assert total(metrics["cortex_gateway_overhead_seconds_count"]) == 4
    assert total(metrics["cortex_node_up"], node="m1") == 1

    on_node = scrape_when(node.url + "/metrics", "neuron_requests_total", 4)
    assert total(on_node["neuron_requests_total"], model=MODEL) == 4
    assert total(on_node["neuron_generated_tokens_total"], model=MODEL) == completion_tokens
    assert total(on_node["neuron_time_to_first_token_seconds_count"], model=MODEL) == 4
    assert total(on_node["neuron_batch_size_count"], model=MODEL) >= completion_tokens / 4
    assert total(on_node["neuron_model_state"], model=MODEL, state="ready") == 1
    assert total(on_node["neuron_model_state"], model=MODEL, state="poisoned") == 0
    # the same question four times: every repeat reuses the KV of its prompt
    assert total(on_node["neuron_prefix_cache_hit_tokens_total"], model=MODEL) > 0


def test_a_stream_its_client_left_is_counted_for_what_the_node_generated(
    fleet: tuple[Gateway, Neuron],
) -> None:
    """The client is told nothing of usage when it cuts a stream; the token counters take
    the node's own count of what it generated up to the cut, as the usage database does."""
    gateway, node = fleet
    url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"

    def counted() -> tuple[float, float]:
        samples = scrape(url)
        return (
            total(samples["cortex_prompt_tokens_total"], model=MODEL),
            total(samples["cortex_completion_tokens_total"], model=MODEL),
        )

    before = counted()
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0)
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=200,
        stream=True,
        extra_headers={"x-request-id": "req-cut-1"},
    )
    next(chunk for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
    stream.close()
    found = f"{node.url}/requests/req-cut-1"
    wait_for(lambda: httpx.get(found, timeout=5).status_code == 200, "the node's count")
    finished = httpx.get(found, timeout=5).json()
    assert finished["finish"] == "cancelled" and 1 <= finished["completion_tokens"] < 200
    expected = (
        before[0] + finished["prompt_tokens"],
        before[1] + finished["completion_tokens"],
    )
    wait_for(lambda: counted() == expected, f"the cut stream's tokens counted: {expected}")


def logged(log: Path, request_id: str) -> list[dict]:
    """The log lines naming ``request_id``. The line is written after the answer is
    sent, by the logging thread: wait for it (a bounded wait, not a timing check)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        found = [entry for entry in lines if entry.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_one_log_line_per_request_names_it(fleet: tuple[Gateway, Neuron]) -> None:
    gateway, node = fleet
    answer = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION, "max_tokens": 4},
        headers={"x-request-id": "req-logged"},
        timeout=30,
    )
    assert answer.status_code == 200
    (line,) = logged(Path(gateway.log_path), "req-logged")
    assert line["logger"] == "cortex.gateway.requests"
    assert (line["model"], line["node"], line["dialect"], line["status"]) == (
        MODEL,
        "m1",
        "openai",
        200,
    )
    assert line["completion_tokens"] == answer.json()["usage"]["completion_tokens"]
    assert line["ttft_ms"] > 0 and line["latency_ms"] >= line["ttft_ms"]
    # the id went on to the neuron, whose own line names it
    (on_node,) = logged(Path(node.log_path), "req-logged")
    assert on_node["logger"] == "cortex.neuron.requests"
    finish = answer.json()["choices"][0]["finish_reason"]
    assert (on_node["model"], on_node["finish"]) == (MODEL, finish)
    assert on_node["completion_tokens"] == line["completion_tokens"]
    assert on_node["prompt_tokens"] == line["prompt_tokens"]
    assert 0 < on_node["ttft_ms"] <= line["ttft_ms"]
    generated = httpx.get(gateway.url + "/fleet").json()
    assert generated["requests_last_min"] >= 1
