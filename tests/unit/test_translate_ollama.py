"""Ollama requests -> neuron bodies, and neuron answers -> Ollama's (translate/ollama.py)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from cortex.errors import InvalidRequest, ModelNotFound, UpstreamError
from cortex.protocol import ollama as ol
from cortex.translate import ollama as tr

TIMINGS = tr.Timings(total_s=1.5, load_s=0.25, prompt_eval_s=0.125, eval_s=1.0)


def chat(**fields: Any) -> ol.ChatRequest:
    return ol.ChatRequest.model_validate({"model": "small", **fields})


def test_options_map_to_the_neurons_sampling_fields() -> None:
    options = {
        "num_ctx": 8192,  # load-time: the profile decides, left out
        "num_predict": 32,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 7,
        "stop": ["\n\n", ""],
        "repeat_penalty": 1.1,
    }
    body = tr.chat_body(chat(messages=[{"role": "user", "content": "hi"}], options=options), "m")
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 32,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 7,
        "stop": ["\n\n"],
        "repetition_penalty": 1.1,
    }


def test_a_negative_num_predict_is_no_limit_and_a_stop_string_a_list() -> None:
    body = tr.chat_body(chat(messages=[], options={"num_predict": -1, "stop": "END"}), "m")
    assert "max_tokens" not in body and body["stop"] == ["END"]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("json", {"type": "json_object"}),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "format",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                },
            },
        ),
        ("", None),
    ],
)
def test_format_becomes_a_response_format(fmt: Any, expected: Any) -> None:
    body = tr.chat_body(chat(messages=[], format=fmt), "m")
    assert body.get("response_format") == expected


def test_tool_calls_get_ids_and_tool_messages_answer_them_by_name() -> None:
    history = [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "get_time", "arguments": {"tz": "CET"}}},
            ],
        },
        {"role": "tool", "tool_name": "get_time", "content": "10:00"},
        {"role": "tool", "content": "sunny"},  # no name: the first call left
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    body = tr.chat_body(chat(messages=history, tools=tools, tool_choice="required"), "m")
    assistant, time_answer, weather_answer = body["messages"][1:]
    assert assistant["content"] is None
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_1_0", "call_1_1"]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert time_answer == {"role": "tool", "tool_call_id": "call_1_1", "content": "10:00"}
    assert weather_answer == {"role": "tool", "tool_call_id": "call_1_0", "content": "sunny"}
    assert body["tools"] == tools and body["tool_choice"] == "required"


def test_images_are_a_clear_400() -> None:
    request = chat(messages=[{"role": "user", "content": "what is this?", "images": ["iVBOR"]}])
    with pytest.raises(InvalidRequest, match="images are not supported") as raised:
        tr.chat_body(request, "m")
    assert raised.value.param == "messages.0.images"
    generate = ol.GenerateRequest(model="small", prompt="?", images=["iVBOR"])
    with pytest.raises(InvalidRequest, match="images"):
        tr.generate_body(generate, "m")


def test_generate_is_a_chat_of_system_and_prompt_or_a_raw_completion() -> None:
    asked = ol.GenerateRequest(model="small", prompt="Hi", system="Be brief.")
    path, body = tr.generate_body(asked, "m")
    assert path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    path, body = tr.generate_body(ol.GenerateRequest(model="small", prompt="Hi", raw=True), "m")
    assert (path, body) == ("/v1/completions", {"model": "m", "prompt": "Hi"})
    with pytest.raises(InvalidRequest, match="context"):
        tr.generate_body(ol.GenerateRequest(model="small", prompt="Hi", context=[1, 2]), "m")


def test_embed_bodies() -> None:
    body = tr.embed_body(ol.EmbedRequest(model="small", input="a", dimensions=8), "m")
    assert body == {"model": "m", "input": ["a"], "encoding_format": "float", "dimensions": 8}
    older = tr.embed_body(ol.EmbeddingsRequest(model="small", prompt="b"), "m")
    assert older["input"] == ["b"]
    with pytest.raises(InvalidRequest):
        tr.embed_body(ol.EmbedRequest(model="small", input=[]), "m")


# --- answers -------------------------------------------------------------------------


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict:
    if content is not None:
        delta["content"] = content
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}


def lines(chunks: list[tr.Chunk]) -> list[dict]:
    return [json.loads(c.line()) for c in chunks]


def test_a_chat_stream_is_chunks_then_a_final_line_with_nanoseconds() -> None:
    stream = tr.OllamaStream(model="small", kind="chat")
    out = stream.feed(chunk("", role="assistant")) + stream.feed(chunk("Par"))
    out += stream.feed(chunk("is.")) + stream.feed(chunk(finish="stop")) + stream.feed(USAGE)
    out += stream.finish(TIMINGS)
    decoded = lines(out)
    assert [d["message"]["content"] for d in decoded] == ["Par", "is.", ""]
    assert [d["done"] for d in decoded] == [False, False, True]
    assert "done_reason" not in decoded[0]
    final = decoded[-1]
    assert final["done_reason"] == "stop"
    assert final["total_duration"] == 1_500_000_000
    assert final["load_duration"] == 250_000_000
    assert final["prompt_eval_duration"] == 125_000_000
    assert final["eval_duration"] == 1_000_000_000
    assert (final["prompt_eval_count"], final["eval_count"]) == (12, 3)
    assert final["model"] == "small" and final["created_at"].endswith("Z")


def test_a_length_cut_is_done_reason_length() -> None:
    stream = tr.OllamaStream(model="small", kind="generate")
    out = stream.feed(chunk("a", "length")) + stream.finish(TIMINGS)
    decoded = lines(out)
    assert decoded[0]["response"] == "a"
    assert decoded[-1]["done_reason"] == "length" and decoded[-1]["response"] == ""


def test_tool_call_fragments_come_whole_with_object_arguments() -> None:
    stream = tr.OllamaStream(model="small", kind="chat")
    call = {"index": 0, "id": "call_x", "function": {"name": "get_weather", "arguments": '{"ci'}}
    out = stream.feed(chunk(tool_calls=[call]))
    out += stream.feed(chunk(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]))
    out += stream.feed(chunk(finish="tool_calls")) + stream.finish(TIMINGS)
    decoded = lines(out)
    assert decoded[0]["message"]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert decoded[-1]["done"] and decoded[-1]["done_reason"] == "stop"


def test_a_cut_call_has_empty_arguments() -> None:
    stream = tr.OllamaStream(model="small", kind="chat")
    call = {"index": 0, "function": {"name": "get_weather", "arguments": '{"city": "Pa'}}
    out = stream.feed(chunk(tool_calls=[call], finish="length")) + stream.finish(TIMINGS)
    assert lines(out)[0]["message"]["tool_calls"][0]["function"]["arguments"] == {}


@pytest.mark.parametrize("think", [None, True, False])
def test_leading_reasoning_is_thinking_unless_think_is_false(think: bool | None) -> None:
    stream = tr.OllamaStream(model="small", kind="chat", think=think)
    out = stream.feed(chunk("<think>\nhmm\n</think>\n\nYes.")) + stream.finish(TIMINGS)
    decoded = lines(out)
    thinking = "".join(d["message"].get("thinking", "") for d in decoded)
    assert thinking == ("" if think is False else "hmm")
    assert "".join(d["message"]["content"] for d in decoded) == "Yes."


def completion(message: dict, finish: str = "stop") -> dict:
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def test_a_whole_chat_answer_joins_what_the_stream_would_send() -> None:
    answer = tr.chat_answer(
        completion({"role": "assistant", "content": "<think>x</think>Hi there"}),
        model="small",
        think=True,
        timings=TIMINGS,
    )
    assert answer.message.content == "Hi there" and answer.message.thinking == "x"
    assert answer.done and answer.done_reason == "stop"
    assert (answer.prompt_eval_count, answer.eval_count) == (5, 2)
    assert answer.total_duration == 1_500_000_000


def test_a_whole_answer_with_tool_calls() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ],
    }  # fmt: skip
    answer = tr.chat_answer(
        completion(message, "tool_calls"), model="small", think=None, timings=TIMINGS
    )
    assert answer.message.content == ""
    assert answer.message.tool_calls is not None
    assert answer.message.tool_calls[0].function.arguments == {"city": "Paris"}
    assert answer.done_reason == "stop"


def test_a_whole_generate_answer_from_a_legacy_completion() -> None:
    legacy = {
        "choices": [{"index": 0, "text": "once upon", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    answer = tr.generate_answer(legacy, model="small", think=None, timings=TIMINGS)
    assert answer.response == "once upon" and answer.done_reason == "length"
    dumped = json.loads(answer.model_dump_json(exclude_none=True))
    assert "thinking" not in dumped and dumped["eval_count"] == 2


def test_embed_answer_keeps_the_input_order() -> None:
    listed = {
        "data": [{"index": 1, "embedding": [0.5]}, {"index": 0, "embedding": [0.25]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    answer = tr.embed_answer(listed, model="small", timings=TIMINGS)
    assert answer.embeddings == [[0.25], [0.5]] and answer.prompt_eval_count == 4
    assert answer.total_duration == 1_500_000_000


def test_errors_are_one_string() -> None:
    assert ol.ollama_error_body(ModelNotFound("nope")) == {"error": "model 'nope' not found"}
    assert json.loads(ol.error_line(UpstreamError("node down"))) == {"error": "node down"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0.0), ("0", 0.0), (300, 300.0), ("10", 10.0), ("5m", 300.0),
     ("1h30m", 5400.0), ("300ms", 0.3), (-1, math.inf), ("-1m", math.inf)],
)  # fmt: skip
def test_keep_alive_in_seconds(value: ol.KeepAlive, seconds: float | None) -> None:
    assert tr.keep_alive_s(value) == seconds


def test_a_keep_alive_that_is_no_duration_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="keep_alive 'soon'"):
        tr.keep_alive_s("soon")
