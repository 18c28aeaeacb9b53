"""The Anthropic Messages API on a real gateway and neuron, driven by the official SDK,
plus raw HTTP checks of what the SDK hides (event lines, no [DONE], envelopes)."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from procs import MODEL, Gateway

pytestmark = pytest.mark.slow

ALIAS = "claude-haiku-4-5"
HELLO = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


def test_a_message_through_an_alias(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=ALIAS, max_tokens=16, messages=HELLO, extra_body={"temperature": 0}
    )
    assert message.id.startswith("msg_")
    assert message.model == ALIAS
    # greedy, the answer is one short sentence that ends well inside max_tokens
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert "Paris" in message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_max_tokens_is_reported_as_the_stop_reason(claude: anthropic.Anthropic) -> None:
    essay = [{"role": "user", "content": "Write a long essay about rivers."}]
    message = claude.messages.create(model=MODEL, max_tokens=5, messages=essay)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5


def test_a_stop_sequence_is_named(claude: anthropic.Anthropic) -> None:
    count = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    message = claude.messages.create(
        model=MODEL,
        max_tokens=60,
        messages=count,
        stop_sequences=["5"],
        extra_body={"temperature": 0},
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "5"
    assert "5" not in message.content[0].text


def test_streaming_matches_the_final_message(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL, max_tokens=24, messages=HELLO, extra_body={"temperature": 0}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in text and final.content[0].text == text
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert final.stop_reason == "end_turn"
    whole = claude.messages.create(
        model=MODEL, max_tokens=24, messages=HELLO, extra_body={"temperature": 0}
    )
    assert whole.content[0].text == text and whole.stop_reason == "end_turn"


async def test_the_async_client(gateway: Gateway) -> None:
    client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    message = await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert message.content[0].text.strip()
    async with client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text.strip()


def test_a_forced_tool_call_round_trip(claude: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    greedy = {"temperature": 0}
    message = claude.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=greedy,
    )
    assert message.stop_reason == "tool_use"
    (call,) = message.content  # a forced call: the tool_use block alone
    assert call.type == "tool_use"
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert call.input == {"city": "Paris"}
    follow_up = claude.messages.create(
        model=MODEL,
        max_tokens=48,
        tools=[WEATHER],
        messages=[
            *ask,
            {"role": "assistant", "content": message.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}],
            },
        ],
        extra_body=greedy,
    )
    # Greedy, the bundled model answers in text from the tool's result (the result reached
    # the prompt), and ends there: no second call, no cut. (Its first token is a near tie:
    # it repeats the result, or says "The weather in Paris is sunny."; both end so.)
    assert follow_up.stop_reason == "end_turn"
    (answer,) = follow_up.content
    assert answer.type == "text" and "sunny" in answer.text.lower()


def test_a_streamed_tool_call_joins_to_its_input(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],
        tool_choice={"type": "any"},
        # greedy: sampled, the city string is free to run past max_tokens (CI saw it once)
        extra_body={"temperature": 0},
    ) as stream:
        final = stream.get_final_message()
    call = next(block for block in final.content if block.type == "tool_use")
    assert final.stop_reason == "tool_use"
    assert call.input == {"city": "Oslo"}


def test_count_tokens_is_exact_and_takes_beta(claude: anthropic.Anthropic, gateway) -> None:
    counted = claude.messages.count_tokens(model=MODEL, messages=HELLO)
    message = claude.messages.create(model=MODEL, max_tokens=1, messages=HELLO)
    assert counted.input_tokens == message.usage.input_tokens
    beta = httpx.post(
        gateway.url + "/v1/messages/count_tokens?beta=true",
        json={"model": MODEL, "messages": HELLO, "system": "Be brief."},
        timeout=30,
    )
    assert beta.status_code == 200
    brief = claude.messages.create(model=MODEL, max_tokens=1, messages=HELLO, system="Be brief.")
    assert beta.json()["input_tokens"] == brief.usage.input_tokens != counted.input_tokens


def test_raw_stream_frames(gateway: Gateway) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": True}
    with httpx.stream(
        "POST", gateway.url + "/v1/messages?beta=true", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    assert "[DONE]" not in raw
    frames = [frame for frame in raw.split("\n\n") if frame.strip()]
    types = []
    for frame in frames:
        event_line, data_line = frame.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        types.append(data["type"])
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    start = json.loads(frames[0].split("\n")[1].removeprefix("data: "))
    assert start["message"]["usage"]["input_tokens"] > 0


def test_errors_come_in_anthropic_envelope(gateway: Gateway) -> None:
    url = gateway.url + "/v1/messages"
    missing = httpx.post(url, json={"model": MODEL, "messages": HELLO}, timeout=10)
    assert missing.status_code == 400
    assert missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.json()["error"]["message"]
    broken = httpx.post(url, content=b"{not json", timeout=10)
    assert broken.status_code == 400 and broken.json()["type"] == "error"
    unknown = httpx.post(
        url, json={"model": "nope", "max_tokens": 5, "messages": HELLO}, timeout=10
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    seeing = httpx.post(
        url,
        json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [image]}]},
        timeout=10,
    )
    assert seeing.status_code == 400 and "image" in seeing.json()["error"]["message"]


def test_a_prompt_over_the_context_names_the_numbers(claude: anthropic.Anthropic) -> None:
    long = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=MODEL, max_tokens=10, messages=long)
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "4096" in caught.value.message


def test_an_answer_the_context_window_cut_says_so(claude: anthropic.Anthropic) -> None:
    # Claude Code asks for 32k-128k tokens; the neuron clamps that to the room left. A cut
    # there is the context window's, not max_tokens' (else Claude Code asks to continue).
    def words(count: int) -> list[dict]:
        return [{"role": "user", "content": "word " * count}]

    base = claude.messages.count_tokens(model=MODEL, messages=words(3000)).input_tokens
    room = 12  # greedy decoding runs on past these (a newline, then code)
    full = words(3000 + 4096 - room - base)
    ask = {"model": MODEL, "messages": full, "extra_body": {"temperature": 0}}
    message = claude.messages.create(max_tokens=1000, **ask)
    assert message.stop_reason == "model_context_window_exceeded"
    assert message.usage.output_tokens == room
    with claude.messages.stream(max_tokens=1000, **ask) as stream:
        assert stream.get_final_message().stop_reason == "model_context_window_exceeded"
    assert claude.messages.create(max_tokens=room, **ask).stop_reason == "max_tokens"


def test_claude_code_extras_are_tolerated(gateway: Gateway) -> None:
    body = {
        "model": "claude-haiku-4-5-20251001",
        "max_tokens": 32000,  # clamped to the model's room
        # greedy: a sampled answer may ramble on for thousands of tokens (seen in CI)
        "temperature": 0,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=abc;"},
            {"type": "text", "text": "You are brief.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "system", "content": "Answer in English."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Say hi.", "cache_control": {"type": "x"}}],
            },
        ],
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": []},
        "output_config": {"effort": "low"},
        "metadata": {"user_id": "u"},
    }
    response = httpx.post(
        gateway.url + "/v1/messages?beta=true",
        json=body,
        headers={"anthropic-beta": "claude-code-20250219,context-management-2025-06-27"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["content"]


def test_models_in_anthropic_shape(gateway: Gateway) -> None:
    listed = httpx.get(
        gateway.url + "/v1/models", headers={"anthropic-version": "2023-06-01"}, timeout=10
    ).json()
    assert listed["has_more"] is False
    assert any(m["id"] == MODEL and m["type"] == "model" for m in listed["data"])
