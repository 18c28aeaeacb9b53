"""Tool calls and constrained output on the bundled model, through the gateway."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest

from procs import MODEL, Gateway

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 40}},
            "required": ["timezone"],
        },
    },
}
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def check_weather_call(call) -> dict:
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    return arguments


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_required_tool_choice_gives_a_valid_call(client: openai.OpenAI, temperature) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        temperature=temperature,
        seed=11,  # sampled, a free string could run long: one fixed draw, not a lottery
        max_tokens=120,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    check_weather_call(call)
    assert not choice.message.content


def test_named_tool_choice_calls_that_tool(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=120,
    )
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert isinstance(json.loads(call.function.arguments)["timezone"], str)


def test_streamed_tool_call_reassembles_to_the_non_streamed_one(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0,
        max_tokens=120,
    )  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert {d.index for d in deltas} == {0}
    assert [d.id for d in deltas if d.id] and len([d.id for d in deltas if d.id]) == 1
    assert len([d for d in deltas if d.function and d.function.name]) == 1
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == json.loads(whole.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # the SDK's own stream helper builds the same call
    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(whole.function.arguments)


FORCED = {
    "model": MODEL,
    "messages": ASK,
    "tools": [WEATHER],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "temperature": 0,
}


def test_a_forced_call_cut_by_max_tokens_is_a_partial_call(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(max_tokens=120, **FORCED)
    assert whole.choices[0].finish_reason == "tool_calls"
    arguments = whole.choices[0].message.tool_calls[0].function.arguments
    # Greedy, a shorter answer is the beginning of the whole one. Its 38 tokens: the marker
    # (1-5), the head up to the brace that opens the arguments (18), the arguments (to 32).
    for max_tokens in (5, 12, 20, 23, 30):
        choice = client.chat.completions.create(max_tokens=max_tokens, **FORCED).choices[0]
        assert choice.finish_reason == "length", (max_tokens, choice)
        assert not choice.message.content, (max_tokens, choice.message.content)  # no markup
        if max_tokens < 18:  # cut before the head was whole: no call yet
            assert choice.message.tool_calls is None, (max_tokens, choice)
            continue
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and call.id.startswith("call_")
        assert arguments.startswith(call.function.arguments) and call.function.arguments
        assert call.function.arguments != arguments, (max_tokens, call)


def test_a_forced_call_cut_by_max_tokens_in_the_anthropic_dialect(gateway: Gateway) -> None:
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    for max_tokens in (5, 24):  # inside the marker; inside the arguments
        request = dict(
            model=MODEL, max_tokens=max_tokens, messages=ASK, tools=[tool],
            tool_choice={"type": "tool", "name": "get_weather"}, extra_body={"temperature": 0},
        )  # fmt: skip
        message = claude.messages.create(**request)
        assert message.stop_reason == "max_tokens"
        assert message.usage.output_tokens == max_tokens
        assert all(block.type == "tool_use" for block in message.content), message.content
        with claude.messages.stream(**request) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "max_tokens"
        assert [(b.type, b.name) for b in final.content] == [
            (b.type, b.name) for b in message.content
        ]
        if max_tokens == 24:
            (block,) = message.content
            assert block.name == "get_weather" and isinstance(block.input, dict)


def test_tool_call_deltas_stream_before_the_call_ends(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(stream=True, max_tokens=120, **FORCED))
    frames = [
        c.choices[0].delta.tool_calls[0]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    ]
    # The name first, then the arguments a token or so at a time, not in one piece at the end.
    assert frames[0].function.name == "get_weather" and frames[0].id
    fragments = [f.function.arguments for f in frames[1:] if f.function.arguments]
    assert len(fragments) > 5
    assert json.loads("".join(f.function.arguments or "" for f in frames))["city"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Cut short, the stream ends in "length" with the call so far, and no markup.
    cut = list(client.chat.completions.create(stream=True, max_tokens=24, **FORCED))
    deltas = [d for c in cut if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather"
    assert cut[-1].choices[0].finish_reason == "length"
    assert not "".join(c.choices[0].delta.content or "" for c in cut if c.choices)


def test_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0,
        max_tokens=120,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    follow_up = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=follow_up, tools=[WEATHER], temperature=0, max_tokens=40
    )
    # Greedy, the bundled model answers in text from the tool's result (the result reached
    # the prompt), and ends there: no second call, no cut. (Its first token is a near tie:
    # it repeats the result, or says "The weather in Paris today is sunny."; both end so.)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice
    assert choice.message.tool_calls is None
    assert "sunny" in choice.message.content.lower()


def test_tool_choice_none_never_calls(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", temperature=0,
        max_tokens=30,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.message.tool_calls is None
    # greedy, it answers in prose until the cap: no call hidden in the text either
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 30
    assert choice.message.content and "tool_call" not in choice.message.content


def test_unknown_named_tool_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="nope"):
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    for temperature in (0, 0.9):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a software engineer."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            },
            temperature=temperature,
            max_tokens=200,
        )
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    # JSON mode guarantees the shape, not an end: a prompt that invites a short object
    # (the same model, asked for "the capital of Italy as JSON", writes digits forever).
    for prompt in (
        'Return a JSON object with the key "capital" and the capital of Italy as its value.',
        'Reply with {"answer": <number>}: what is 2+2?',
    ):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            response_format={"type": "json_object"},
            temperature=0,
            max_tokens=300,
        )
        assert reply.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_legacy_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 6
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="The capital of France is",
            temperature=0,
            max_tokens=6,
            stream=True,
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == reply.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_logprobs_are_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model=MODEL, messages=ASK, logprobs=True, top_logprobs=2)
