"""OpenAI chat completions -> Anthropic messages, checked by the official SDK."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from anthropic_sdk import created_message
from cortex.errors import UpstreamError
from cortex.protocol import anthropic as an
from cortex.translate.ids import to_backend_tool_id
from cortex.translate.responses import partial_input, to_message


def completion(
    content: str | None = "Hello!",
    *,
    finish: str | None = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    **choice_extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen3-8b",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice_extra}],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def call(id_: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def convert(body: dict[str, Any], **options: Any) -> an.Message:
    message = to_message(body, **options)
    # The SDK reads what we would send: every field it requires is there.
    parsed = created_message(json.loads(message.model_dump_json()))
    assert parsed.model_dump(exclude_none=True) == message.model_dump(exclude_none=True)
    return message


def test_plain_answer() -> None:
    message = convert(completion(), model="claude-sonnet-4")
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == "claude-sonnet-4"
    assert message.content == [an.TextBlock(text="Hello!")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage == an.Usage(input_tokens=12, output_tokens=3)
    assert message.usage.cache_read_input_tokens == 0 == message.usage.cache_creation_input_tokens


def test_model_defaults_to_the_backend_name() -> None:
    assert convert(completion()).model == "qwen3-8b"


def test_length_is_max_tokens() -> None:
    assert convert(completion(finish="length")).stop_reason == "max_tokens"
    reached = completion(finish="length", usage={"prompt_tokens": 9, "completion_tokens": 100})
    assert convert(reached, max_tokens=100).stop_reason == "max_tokens"


def test_length_short_of_max_tokens_is_the_context_window() -> None:
    # Claude Code asks for 128000 tokens; the neuron clamps that to the room the prompt
    # leaves (4096 - 304 here) and stops there.
    full = completion(finish="length", usage={"prompt_tokens": 304, "completion_tokens": 3792})
    assert convert(full, max_tokens=128000).stop_reason == "model_context_window_exceeded"


def test_content_filter_is_refusal() -> None:
    assert convert(completion(finish="content_filter")).stop_reason == "refusal"


def test_stop_sequence_named_by_the_backend() -> None:
    for field in ("stop_reason", "stop_sequence"):  # vLLM's field, then cortex's
        message = convert(completion("Count: 1 2 3 ", **{field: "STOP"}), stop_sequences=["STOP"])
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")


def test_a_matched_string_the_request_did_not_ask_for_is_ignored() -> None:
    message = convert(completion("x", stop_reason="</s>"), stop_sequences=["STOP"])
    assert message.stop_reason == "end_turn"


def test_eos_token_id_in_stop_reason_is_end_turn() -> None:
    message = convert(completion("x", stop_reason=2), stop_sequences=["STOP"])
    assert message.stop_reason == "end_turn"


def test_stop_sequence_left_at_the_end_of_the_text() -> None:
    message = convert(completion("1 2 3 STOP"), stop_sequences=["\n", "STOP"])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")


def test_without_any_sign_a_stop_is_end_turn() -> None:
    # A compliant backend drops the stop string and says nothing more: nothing to go on.
    assert convert(completion("1 2 3 "), stop_sequences=["STOP"]).stop_reason == "end_turn"


def test_tool_calls_become_tool_use_blocks_with_legal_ids() -> None:
    calls = [call("call_1", "get_weather", '{"city": "Paris"}'), call("call.abc:1", "now", "")]
    message = convert(completion("Let me check.", finish="tool_calls", tool_calls=calls))
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    first, second = message.content[1], message.content[2]
    assert isinstance(first, an.ToolUseBlock) and isinstance(second, an.ToolUseBlock)
    assert first.name == "get_weather" and first.input == {"city": "Paris"}
    assert second.input == {}
    for block, backend in ((first, "call_1"), (second, "call.abc:1")):
        assert re.fullmatch(r"toolu_[a-zA-Z0-9_-]+", block.id)
        assert to_backend_tool_id(block.id) == backend
    assert message.stop_reason == "tool_use"


def test_tool_calls_force_tool_use_whatever_the_finish() -> None:
    message = convert(completion(None, finish="stop", tool_calls=[call("c", "f", "{}")]))
    assert [b.type for b in message.content] == ["tool_use"] and message.stop_reason == "tool_use"


def test_a_tool_call_without_an_id_gets_a_unique_one() -> None:
    calls = [call("", "f", "{}"), call("", "g", "{}")]
    blocks = convert(completion(None, tool_calls=calls)).content
    assert len({block.id for block in blocks if isinstance(block, an.ToolUseBlock)}) == 2


def test_arguments_that_are_not_an_object_become_what_can_be_read_of_them() -> None:
    # the model's slip, not the server's failure: a tool_use block, never a 502
    for bad, expected in (("{not json", {}), ("[1, 2]", {}), ('{"a": 1, oops', {"a": 1})):
        (block,) = to_message(completion(None, tool_calls=[call("c", "f", bad)])).content
        assert isinstance(block, an.ToolUseBlock) and block.input == expected


def test_think_tags_become_a_signed_thinking_block_first() -> None:
    message = convert(completion("<think>\nThe user greets me.\n</think>\n\nHello!"))
    thinking, text = message.content
    assert isinstance(thinking, an.ThinkingBlock) and isinstance(text, an.TextBlock)
    assert thinking.thinking == "The user greets me." and thinking.signature
    assert text.text == "Hello!"


def test_reasoning_content_field_becomes_thinking() -> None:
    body = completion("Hello!")
    body["choices"][0]["message"]["reasoning_content"] = "Greeting."
    thinking, _ = convert(body).content
    assert isinstance(thinking, an.ThinkingBlock) and thinking.thinking == "Greeting."


def test_whitespace_only_text_before_a_tool_call_is_dropped() -> None:
    message = convert(completion("\n\n", tool_calls=[call("c", "f", "{}")]))
    assert [b.type for b in message.content] == ["tool_use"]


def test_empty_answer_has_no_blocks_and_still_a_stop_reason() -> None:
    message = convert(
        completion("", finish="length", usage={"prompt_tokens": 5, "completion_tokens": 1})
    )
    assert message.content == [] and message.stop_reason == "max_tokens"


def test_no_choices_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        to_message({"id": "x", "choices": []})


def test_of_two_stops_left_in_the_text_the_one_that_started_first_wins() -> None:
    message = convert(completion("xSTOP"), stop_sequences=["P", "STOP"])
    assert message.stop_sequence == "STOP"


def test_a_tool_call_cut_by_max_tokens_is_max_tokens_with_its_partial_input() -> None:
    body = completion(
        None, finish="length", tool_calls=[call("call_1", "get_weather", '{"city": "Pa')]
    )
    message = convert(body)
    assert message.stop_reason == "max_tokens"
    (block,) = message.content
    assert isinstance(block, an.ToolUseBlock) and block.name == "get_weather"
    assert block.input == {"city": "Pa"}


def test_a_cut_call_whose_arguments_read_as_nothing_has_empty_input() -> None:
    for cut in ("", "{", '{"ci', "{not json", "[1, 2"):
        message = convert(completion(None, finish="length", tool_calls=[call("c", "f", cut)]))
        assert [b.type for b in message.content] == ["tool_use"]
        assert message.content[0].input == {}  # type: ignore[union-attr]


def test_a_call_the_model_closed_early_keeps_what_it_wrote() -> None:
    body = completion(None, finish="tool_calls", tool_calls=[call("c", "f", '{"a": "x", "b": ')])
    message = to_message(body)
    assert message.stop_reason == "tool_use"
    assert message.content[0].input == {"a": "x"}  # type: ignore[union-attr]


def test_length_short_of_max_tokens_in_a_tool_call_is_the_context_window() -> None:
    body = completion(
        None,
        finish="length",
        tool_calls=[call("c", "f", '{"a": 1')],
        usage={"prompt_tokens": 304, "completion_tokens": 3792},
    )
    message = convert(body, max_tokens=128000)
    assert message.stop_reason == "model_context_window_exceeded"
    assert message.content[0].input == {"a": 1}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        ('{"city": "Pa', {"city": "Pa"}),
        ('{"city"', {}),
        ('{"city": ', {}),
        ('{"a": 1, "b": tr', {"a": 1}),
        ('{"a": 12', {"a": 12}),
        ('{"a": [1, {"b": "x"', {"a": [1, {"b": "x"}]}),
        ('{"a": "b", ', {"a": "b"}),
        ('{"a": {"b": [1, "x,{", ', {"a": {"b": [1, "x,{"]}}),
        ('{"a": "x\\', {"a": "x"}),
        ('{"a": "x\\u00', {"a": "x"}),
        ('{"a": "\\u0041", "b": "c\\n', {"a": "A", "b": "c\n"}),
        ('{"k\\u00', {}),
        ('{"a": 1}', {"a": 1}),
    ],
)
def test_partial_input_reads_what_it_can(cut: str, expected: dict[str, Any]) -> None:
    assert partial_input(cut) == expected
