"""Ollama's API on a real gateway and neuron, driven by the official ``ollama`` client,
plus raw HTTP checks of what the client hides (NDJSON lines, error bodies)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import openai
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron, free_port

pytestmark = pytest.mark.slow

ALIAS = "small"
HELLO = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
GREEDY = {"temperature": 0, "num_predict": 24}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> ollama.Client:
    return ollama.Client(host=gateway.url, timeout=120)


def check_stats(answer: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    """Measured, in nanoseconds: the parts fit in the whole."""
    assert answer.done is True
    assert answer.prompt_eval_count and answer.prompt_eval_count > 0
    assert answer.eval_count and answer.eval_count > 0
    total = answer.total_duration or 0
    assert total > 1_000_000  # over a millisecond: nanoseconds, not seconds
    parts = (answer.load_duration or 0) + (answer.prompt_eval_duration or 0)
    assert 0 < parts + (answer.eval_duration or 0) <= total


def test_list_show_ps_and_version(client: ollama.Client, gateway: Gateway) -> None:
    listed = client.list().models
    assert [m.model for m in listed] == [MODEL]
    assert listed[0].details is not None and listed[0].details.format == "gguf"
    assert listed[0].details.parameter_size == "135M"
    running = client.ps().models
    assert [m.model for m in running] == [MODEL]
    assert running[0].size and running[0].size > 0 and running[0].context_length == 4096
    assert running[0].expires_at is not None
    shown = client.show(ALIAS)  # an alias shows its model
    assert shown.modelinfo is not None and shown.modelinfo["cortex.context_length"] == 4096
    assert shown.capabilities is not None and "completion" in shown.capabilities
    assert httpx.get(gateway.url + "/api/version").json()["version"]


def test_chat_through_an_alias(client: ollama.Client) -> None:
    answer = client.chat(model=ALIAS, messages=HELLO, options=GREEDY)
    assert answer.model == ALIAS and answer.message.role == "assistant"
    assert "Paris" in (answer.message.content or "")
    assert answer.done_reason == "stop"
    check_stats(answer)


def test_a_stream_joins_up_to_the_whole_answer(client: ollama.Client) -> None:
    parts = list(client.chat(model=MODEL, messages=HELLO, options=GREEDY, stream=True))
    assert len(parts) > 2 and all(not p.done for p in parts[:-1])
    text = "".join(p.message.content or "" for p in parts)
    whole = client.chat(model=MODEL, messages=HELLO, options=GREEDY)
    assert text == whole.message.content and "Paris" in text
    check_stats(parts[-1])
    assert parts[-1].eval_count == whole.eval_count


def test_the_same_greedy_answer_as_chat_completions(client: ollama.Client, gateway: Gateway):
    openai_client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    asked = [{"role": "user", "content": "Name three colours of the rainbow."}]
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=asked, temperature=0, max_tokens=40
    )
    answer = client.chat(model=MODEL, messages=asked, options={"temperature": 0, "num_predict": 40})
    assert answer.message.content == reply.choices[0].message.content
    assert answer.eval_count == reply.usage.completion_tokens
    assert answer.prompt_eval_count == reply.usage.prompt_tokens


def test_num_predict_cuts_with_done_reason_length(client: ollama.Client) -> None:
    essay = [{"role": "user", "content": "Write a long essay about rivers."}]
    answer = client.chat(model=MODEL, messages=essay, options={"num_predict": 5})
    assert answer.done_reason == "length" and answer.eval_count == 5


def test_generate_streamed_and_not(client: ollama.Client) -> None:
    whole = client.generate(model=MODEL, prompt=HELLO[0]["content"], options=GREEDY)
    assert "Paris" in whole.response
    check_stats(whole)
    parts = list(
        client.generate(model=MODEL, prompt=HELLO[0]["content"], options=GREEDY, stream=True)
    )
    assert "".join(p.response for p in parts) == whole.response
    raw = client.generate(model=MODEL, prompt="The capital of France is", raw=True,
                          options={"temperature": 0, "num_predict": 3})  # fmt: skip
    assert raw.eval_count == 3 and raw.done_reason == "length"


def test_a_format_schema_gives_valid_json(client: ollama.Client) -> None:
    asked = [{"role": "user", "content": "Describe a person as JSON."}]
    answer = client.chat(model=MODEL, messages=asked, format=PERSON, options={"temperature": 0})
    jsonschema.validate(json.loads(answer.message.content or ""), PERSON)
    # JSON mode guarantees the shape, not an end: a prompt that invites a short object
    prompt = 'Return a JSON object with the key "capital" and the capital of Italy as its value.'
    loose = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        format="json",
        options={"temperature": 0, "num_predict": 300},
    )
    assert loose.done_reason == "stop"
    assert isinstance(json.loads(loose.message.content or ""), dict)


def chat_raw(gateway: Gateway, **body: object) -> httpx.Response:
    return httpx.post(gateway.url + "/api/chat", json={"model": MODEL, **body}, timeout=120)


def test_a_forced_tool_call_in_ollamas_shape(gateway: Gateway) -> None:
    # Ollama has no tool_choice and the 135M model rarely calls on its own: cortex's
    # tool_choice extension forces the call through a grammar. The official client
    # cannot send the field, so the answers are read through its own types.
    forced = {"messages": ASK, "tools": [WEATHER], "tool_choice": "required",
              "options": {"temperature": 0}}  # fmt: skip
    answer = ollama.ChatResponse(**chat_raw(gateway, stream=False, **forced).json())
    calls = answer.message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather"]
    jsonschema.validate(dict(calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert answer.done_reason == "stop"
    streamed = chat_raw(gateway, stream=True, **forced)
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    parts = [ollama.ChatResponse(**json.loads(line)) for line in streamed.text.splitlines()]
    streamed_calls = [c for p in parts for c in p.message.tool_calls or []]
    assert streamed_calls == calls and parts[-1].done


def test_a_tool_round_trip_through_the_client(client: ollama.Client) -> None:
    history = [
        *ASK,
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 24 degrees Celsius."},
    ]  # fmt: skip
    answer = client.chat(model=MODEL, messages=history, tools=[WEATHER], options=GREEDY)
    assert answer.message.content and not answer.message.tool_calls
    check_stats(answer)


def test_embed_and_the_older_embeddings(client: ollama.Client, gateway: Gateway) -> None:
    embedded = client.embed(model=MODEL, input=["rivers", "mountains"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) > 100
    assert embedded.prompt_eval_count and embedded.prompt_eval_count > 0
    one = client.embeddings(model=MODEL, prompt="rivers").embedding
    assert one == pytest.approx(embedded.embeddings[0], abs=1e-5)
    openai_client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    same = openai_client.embeddings.create(model=MODEL, input="rivers", encoding_format="float")
    assert same.data[0].embedding == pytest.approx(one, abs=1e-5)


def test_errors_in_ollamas_shape(client: ollama.Client, gateway: Gateway) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="no-such-model", messages=HELLO)
    assert unknown.value.status_code == 404 and "not found" in unknown.value.error
    bad = httpx.post(gateway.url + "/api/chat", content=b"{not json")
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    with pytest.raises(ollama.ResponseError) as images:
        client.chat(model=MODEL, messages=[{**HELLO[0], "images": [b"\x89PNG\r\n"]}])
    assert images.value.status_code == 400 and "images are not supported" in images.value.error
    with pytest.raises(ollama.ResponseError) as deleted:
        client.delete(MODEL)
    assert deleted.value.status_code == 400 and "models.toml" in deleted.value.error


def test_pull_loads_with_progress(client: ollama.Client) -> None:
    progress = list(client.pull(ALIAS, stream=True))
    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"
    assert client.pull(MODEL).status == "success"
    with pytest.raises(ollama.ResponseError) as unknown:
        client.pull("no-such-model")
    assert unknown.value.status_code == 404


def test_ollama_listen_serves_the_same_api_on_a_second_port(
    neuron: Neuron, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    config = f"""
[gateway]
poll_interval_s = 0.5
ollama_listen = "127.0.0.1:{port}"

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"
"""
    models = f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\n'
    gateway = Gateway(tmp_path_factory.mktemp("ollama-listen"), config, models, {MODEL})
    try:
        second = ollama.Client(host=f"http://127.0.0.1:{port}", timeout=60)
        assert [m.model for m in second.list().models] == [MODEL]
        answer = second.chat(model=MODEL, messages=HELLO, options=GREEDY)
        assert "Paris" in (answer.message.content or "")
        assert ollama.Client(host=gateway.url).ps().models[0].model == MODEL  # one gateway
    finally:
        gateway.stop()
