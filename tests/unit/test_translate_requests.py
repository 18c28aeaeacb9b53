"""Anthropic Messages requests -> the OpenAI chat request a neuron serves."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cortex.errors import InvalidRequest
from cortex.protocol import anthropic as an
from cortex.protocol.openai import ChatCompletionRequest
from cortex.protocol.parsing import parse_model
from cortex.translate.ids import to_anthropic_tool_id
from cortex.translate.requests import to_chat_request

BILLING = "x-anthropic-billing-header: cc_version=2.1.197.abc; cc_entrypoint=sdk-cli; cch=93f2e;"


def chat(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Parse as the gateway will, translate, and check a neuron would accept the result."""
    request = parse_model(an.MessagesRequest, {"model": "claude-x", "max_tokens": 100, **body})
    out = to_chat_request(request, **options)
    ChatCompletionRequest.model_validate(out)
    json.dumps(out)  # JSON-ready
    return out


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def test_minimal_request() -> None:
    out = chat({"messages": [user("Hello")]})
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 100,
    }


def test_model_can_be_replaced() -> None:
    assert chat({"messages": [user("Hi")]}, model="qwen")["model"] == "qwen"


def test_missing_max_tokens_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_model(an.MessagesRequest, {"model": "m", "messages": [user("Hi")]})
    assert caught.value.status == 400 and caught.value.param == "max_tokens"


def test_max_tokens_one_probe_is_fine() -> None:
    assert chat({"max_tokens": 1, "messages": [user("Hi")]})["max_tokens"] == 1


def test_count_tokens_request_needs_no_max_tokens() -> None:
    request = parse_model(an.CountTokensRequest, {"model": "m", "messages": [user("Hi")]})
    out = to_chat_request(request)
    assert out == {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    "system",
    [
        "Be brief.",
        [{"type": "text", "text": "Be brief."}],
        [
            {
                "type": "text",
                "text": "Be brief.",
                "cache_control": {"type": "ephemeral", "ttl": "1h", "scope": "global"},
            }
        ],
    ],
)
def test_system_as_string_or_blocks_gives_the_same_prompt(system: Any) -> None:
    out = chat({"system": system, "messages": [user("Hi")]})
    assert out["messages"][0] == {"role": "system", "content": "Be brief."}


def test_system_blocks_are_joined() -> None:
    blocks = [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]
    out = chat({"system": blocks, "messages": [user("Hi")]})
    assert out["messages"][0]["content"] == "One.\n\nTwo."


def test_billing_header_block_is_kept_out_of_the_prompt() -> None:
    def prompt(cch: str) -> list[dict[str, Any]]:
        system = [
            {"type": "text", "text": BILLING.replace("93f2e", cch)},
            {
                "type": "text",
                "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"},
            },
        ]
        return chat({"system": system, "messages": [user("Hi")]})["messages"]

    assert prompt("aaaaa") == prompt("bbbbb")
    assert "billing" not in json.dumps(prompt("aaaaa"))
    assert prompt("aaaaa")[0] == {"role": "system", "content": "You are Claude Code."}


def test_billing_header_line_at_the_start_of_a_system_string() -> None:
    out = chat({"system": BILLING + "\nBe brief.", "messages": [user("Hi")]})
    assert out["messages"][0] == {"role": "system", "content": "Be brief."}


def test_leading_system_messages_join_the_system_prompt() -> None:
    messages = [{"role": "system", "content": "Extra rule."}, user("Hi")]
    out = chat({"system": "Be brief.", "messages": messages})
    assert out["messages"] == [
        {"role": "system", "content": "Be brief.\n\nExtra rule."},
        {"role": "user", "content": "Hi"},
    ]


def test_system_message_mid_conversation_joins_the_system_prompt() -> None:
    # What Claude Code >= 2.1.154 sends: a user turn, then a role: system message
    # (2.1.332: its environment block, with cache_control and a per-turn output_config).
    messages = [
        user(
            [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "Go"},
            ]
        ),
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}
            ],
            "output_config": {"effort": "medium"},
        },
        assistant("Done."),
        user("More"),
        {"role": "system", "content": "Mode: plan"},
    ]
    out = chat({"system": "S", "messages": messages})
    assert out["messages"] == [
        {"role": "system", "content": "S\n\n# Environment\n\nMode: plan"},
        {"role": "user", "content": "<system-reminder>ctx</system-reminder>\n\nGo"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "More"},
    ]


def test_the_leading_prompt_stays_put_as_a_conversation_grows() -> None:
    # Claude Code resends its system message in the same place every turn: the prompt of
    # turn 2 must start with the prompt of turn 1, so the neuron's prefix cache hits.
    first = [user("Go"), {"role": "system", "content": "# Environment"}]
    second = [*first, assistant("Done."), user("More")]
    one = chat({"system": "S", "messages": first})["messages"]
    two = chat({"system": "S", "messages": second})["messages"]
    assert two[: len(one)] == one


def test_system_message_never_lands_between_a_tool_call_and_its_result() -> None:
    messages = [
        user("Run it"),
        assistant([{"type": "tool_use", "id": "toolu_1", "name": "run", "input": {}}]),
        {"role": "system", "content": "Note"},
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}]),
    ]
    out = chat({"messages": messages})["messages"]
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool"]
    assert out[0]["content"] == "Note"


def test_consecutive_turns_of_one_role_merge() -> None:
    out = chat({"messages": [user("a"), user("b"), assistant("c"), assistant("d")]})
    assert out["messages"] == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c\n\nd"},
    ]


def test_tool_definitions_and_every_tool_choice() -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
            "input_examples": [{"city": "Paris"}],
            "defer_loading": False,
        }
    ]
    base = {"tools": tools, "messages": [user("Weather?")]}
    out = chat(base)
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": tools[0]["input_schema"],
                "description": "Weather now",
            },
        }
    ]
    assert "tool_choice" not in out
    expected = {
        "auto": "auto",
        "any": "required",
        "none": "none",
    }
    for kind, value in expected.items():
        assert chat({**base, "tool_choice": {"type": kind}})["tool_choice"] == value
    named = chat({**base, "tool_choice": {"type": "tool", "name": "get_weather"}})
    assert named["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    serial = chat({**base, "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}})
    assert serial["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in chat({**base, "tool_choice": {"type": "auto"}})


def test_deferred_tools_wait_for_a_tool_reference() -> None:
    # Claude Code 2.1.332 sends a placeholder that keeps deferred loading on; on Anthropic's
    # API a defer_loading tool enters the context only once a tool search names it.
    schema = {"type": "object", "properties": {}}
    tools = [
        {"name": "Read", "input_schema": schema},
        {"name": "DeferredToolPlaceholder", "input_schema": schema, "defer_loading": True},
        {"name": "NotebookEdit", "input_schema": schema, "defer_loading": True},
    ]
    names = [
        t["function"]["name"] for t in chat({"tools": tools, "messages": [user("x")]})["tools"]
    ]
    assert names == ["Read"]
    found = [
        user("Edit the notebook"),
        assistant([{"type": "tool_use", "id": "toolu_1", "name": "ToolSearch", "input": {}}]),
        user(
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "tool_reference", "tool_name": "NotebookEdit"}],
                }
            ]
        ),
    ]
    out = chat({"tools": tools, "messages": found})
    assert [t["function"]["name"] for t in out["tools"]] == ["Read", "NotebookEdit"]


def test_only_deferred_tools_means_no_tools() -> None:
    tools = [{"name": "P", "input_schema": {"type": "object"}, "defer_loading": True}]
    out = chat({"tools": tools, "tool_choice": {"type": "auto"}, "messages": [user("x")]})
    assert "tools" not in out and "tool_choice" not in out


def test_tool_choice_tool_without_name_is_a_400() -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    with pytest.raises(InvalidRequest):
        chat({"tools": tools, "tool_choice": {"type": "tool"}, "messages": [user("x")]})


def test_server_tools_are_left_out() -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
    out = chat({"tools": tools, "tool_choice": {"type": "auto"}, "messages": [user("x")]})
    assert "tools" not in out and "tool_choice" not in out


def test_sampling_fields_pass_through() -> None:
    out = chat(
        {
            "messages": [user("x")],
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["STOP", "\n\nHuman:"],
            "stream": True,
        }
    )
    assert out["temperature"] == 0.2 and out["top_p"] == 0.9 and out["top_k"] == 40
    assert out["stop"] == ["STOP", "\n\nHuman:"]
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def test_tool_round_trip_with_results_sibling_text_and_errors() -> None:
    messages = [
        user("Weather in Paris and Rome?"),
        assistant(
            [
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": to_anthropic_tool_id("call_a"),
                    "name": "w",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": to_anthropic_tool_id("call.b:1"),
                    "name": "w",
                    "input": {"city": "Rome"},
                },
            ]
        ),
        user(
            [
                # Results out of call order, a block-list result, an error, and sibling text.
                {
                    "type": "tool_result",
                    "tool_use_id": to_anthropic_tool_id("call.b:1"),
                    "content": "timeout",
                    "is_error": True,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": to_anthropic_tool_id("call_a"),
                    "content": [{"type": "text", "text": "18C"}, {"type": "text", "text": "sunny"}],
                },
                {"type": "text", "text": "Summarise please."},
            ]
        ),
    ]
    out = chat({"messages": messages})["messages"]
    assert out[1] == {
        "role": "assistant",
        "content": "Checking both.",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "w", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call.b:1",
                "type": "function",
                "function": {"name": "w", "arguments": '{"city": "Rome"}'},
            },
        ],
    }
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "18C\n\nsunny"},
        {"role": "tool", "tool_call_id": "call.b:1", "content": "Error: timeout"},
        {"role": "user", "content": "Summarise please."},
    ]


def test_text_before_tool_results_also_follows_them() -> None:
    messages = [
        user("go"),
        assistant([{"type": "tool_use", "id": "toolu_x", "name": "f", "input": {}}]),
        user(
            [{"type": "text", "text": "before"}, {"type": "tool_result", "tool_use_id": "toolu_x"}]
        ),
    ]
    out = chat({"messages": messages})["messages"]
    assert out[1]["content"] is None
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "x", "content": ""},
        {"role": "user", "content": "before"},
    ]


def test_error_result_already_saying_error_is_not_prefixed_twice() -> None:
    messages = [
        user("go"),
        assistant([{"type": "tool_use", "id": "toolu_x", "name": "f", "input": {}}]),
        user(
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_x",
                    "content": "Error: nope",
                    "is_error": True,
                }
            ]
        ),
    ]
    assert chat({"messages": messages})["messages"][2]["content"] == "Error: nope"


def test_thinking_is_accepted_and_earlier_thinking_blocks_dropped() -> None:
    messages = [
        user("Hi"),
        assistant(
            [
                {"type": "thinking", "thinking": "Let me think", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Hello"},
            ]
        ),
        assistant([{"type": "thinking", "thinking": "only thinking", "signature": "s"}]),
        user("Again"),
    ]
    out = chat({"thinking": {"type": "enabled", "budget_tokens": 1024}, "messages": messages})
    assert out["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    assert "thinking" not in out
    assert "Let me think" not in json.dumps(out)


def test_adaptive_thinking_and_claude_code_extras_are_tolerated() -> None:
    body = {
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": '{"session": "x"}'},
        "cache_control": {"type": "ephemeral"},
        "service_tier": "auto",
        "messages": [
            user(
                [
                    {
                        "type": "text",
                        "text": "Hi",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    },
                    {"type": "tool_reference", "tool_name": "Bash"},
                    {"type": "brand_new_block", "anything": [1, 2]},
                ]
            )
        ],
    }
    assert chat(body)["messages"] == [{"role": "user", "content": "Hi"}]


def image_block(kind: str = "base64") -> dict[str, Any]:
    if kind == "url":
        return {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }


def test_images_are_a_clear_400_by_default() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat({"messages": [user([{"type": "text", "text": "What is this?"}, image_block()])]})
    assert caught.value.status == 400
    assert "cannot see images" in caught.value.message and "claude-x" in caught.value.message


def test_images_inside_tool_results_are_refused_too() -> None:
    messages = [
        user("shot"),
        assistant([{"type": "tool_use", "id": "toolu_s", "name": "screenshot", "input": {}}]),
        user([{"type": "tool_result", "tool_use_id": "toolu_s", "content": [image_block()]}]),
    ]
    with pytest.raises(InvalidRequest, match="cannot see images"):
        chat({"messages": messages})


def test_pdf_documents_are_refused_by_default() -> None:
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
    }
    with pytest.raises(InvalidRequest, match="cannot see documents"):
        chat({"messages": [user([pdf])]})


def test_plain_text_documents_are_read_as_text() -> None:
    doc = {
        "type": "document",
        "title": "notes.txt",
        "source": {"type": "text", "media_type": "text/plain", "data": "alpha beta"},
    }
    out = chat({"messages": [user([doc, {"type": "text", "text": "Summarise"}])]})
    assert out["messages"] == [{"role": "user", "content": "notes.txt\n\nalpha beta\n\nSummarise"}]


def test_images_map_to_image_url_parts_when_allowed() -> None:
    content = [{"type": "text", "text": "Compare"}, image_block(), image_block("url")]
    out = chat({"messages": [user(content)]}, allow_images=True)
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]


def test_tool_result_images_follow_the_tool_message_when_allowed() -> None:
    messages = [
        user("shot"),
        assistant([{"type": "tool_use", "id": "toolu_s", "name": "screenshot", "input": {}}]),
        user(
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_s",
                    "content": [{"type": "text", "text": "taken"}, image_block()],
                }
            ]
        ),
    ]
    out = chat({"messages": messages}, allow_images=True)["messages"]
    assert out[2] == {"role": "tool", "tool_call_id": "s", "content": "taken"}
    assert out[3]["role"] == "user" and out[3]["content"][0]["type"] == "image_url"
