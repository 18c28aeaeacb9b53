"""Chain hashes over a request's prompt parts (``protocol.prefix_digest``): a follow-up
shares every hash of the turns before it, and nothing with another conversation."""

from __future__ import annotations

from typing import Any

from cortex.protocol import anthropic as an
from cortex.protocol.parsing import parse_model
from cortex.protocol.prefix_digest import (
    MIN_SHARED_CHARS,
    TEXT_CHUNK_CHARS,
    PrefixSet,
    chain_of,
    match_depth,
    prefix_chain,
)
from cortex.translate.requests import to_chat_request

SYSTEM = {"role": "system", "content": "Be brief."}
FIRST = [SYSTEM, {"role": "user", "content": "Name a river."}]
FOLLOW_UP = [
    *FIRST,
    {"role": "assistant", "content": "The Nile."},
    {"role": "user", "content": "Another?"},
]


def test_a_follow_up_shares_every_earlier_hash() -> None:
    first = prefix_chain({"messages": FIRST})
    later = prefix_chain({"messages": FOLLOW_UP, "temperature": 0.2, "max_tokens": 9})
    assert len(first) == 3 and len(later) == 5  # the preamble, then one per message
    assert later[:3] == first  # sampling fields render no prompt text
    assert len(set(later)) == 5
    held = PrefixSet(100)
    held.add(first)
    assert match_depth(later, held) == 3


def test_a_different_system_prompt_or_tools_share_nothing_past_them() -> None:
    first = prefix_chain({"messages": FIRST})
    other_system = [{"role": "system", "content": "Be verbose."}, *FOLLOW_UP[1:]]
    other = prefix_chain({"messages": other_system})
    assert other[0] == first[0] and not set(other[1:]) & set(first)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with_tools = prefix_chain({"messages": FIRST, "tools": tools})
    assert not set(with_tools) & set(first)


def test_the_hashes_ignore_key_order_and_nulls() -> None:
    reordered = [{"content": m["content"], "role": m["role"]} for m in FIRST]
    assert prefix_chain({"messages": reordered}) == prefix_chain({"messages": FIRST})
    with_nulls = [{**m, "name": None} for m in FIRST]
    assert prefix_chain({"messages": with_nulls}) == prefix_chain({"messages": FIRST})


def test_text_prompts_share_their_whole_leading_runs() -> None:
    document = "x" * (TEXT_CHUNK_CHARS * 2) + "first question"
    first = prefix_chain({"prompt": document})
    later = prefix_chain({"prompt": document + " answer. second question"})
    assert len(first) == 3 and later[:2] == first[:2] and later[2] != first[2]
    assert prefix_chain({"prompt": [document]}) == first
    assert prefix_chain({"prompt": [1, 2, 3]}) != []
    assert prefix_chain({"input": "an embedding"}) == []


def test_the_set_drops_the_least_recently_seen() -> None:
    held = PrefixSet(3)
    held.add(["a", "b"])
    held.add(["c"])
    held.add(["a"])  # touched: now the most recent
    held.add(["d"])
    assert held.hashes() == ["c", "a", "d"] and "b" not in held and len(held) == 3
    assert match_depth(["a", "b", "c"], held) == 3
    assert match_depth(["x", "y"], held, frozenset({"x"})) == 1
    assert match_depth([], held) == 0


def test_a_match_counts_from_the_first_user_message_or_a_long_opening() -> None:
    chain = chain_of({"messages": FOLLOW_UP})
    assert chain.opening == 3  # preamble, system, first user message
    assert [chain.counts(d) for d in range(6)] == [False, False, False, True, True, True]
    long_system = {"role": "system", "content": "x" * MIN_SHARED_CHARS}
    assert chain_of({"messages": [long_system, *FOLLOW_UP[1:]]}).counts(2)
    text = chain_of({"prompt": "short"})
    assert text.opening == 1 and text.counts(1)
    assert chain_of({"messages": [SYSTEM]}).counts(2)  # no user message: all of it counts


def test_an_anthropic_follow_up_shares_its_earlier_turns_once_translated() -> None:
    """Claude Code moves its cache_control mark to the newest message every turn and
    changes the billing line per conversation: neither may break the chain."""

    def translated(messages: list[dict[str, Any]], billing: str) -> list[str]:
        body = {
            "model": "claude-x",
            "max_tokens": 100,
            "system": [{"type": "text", "text": billing}, {"type": "text", "text": "Be brief."}],
            "messages": messages,
        }
        return prefix_chain(to_chat_request(parse_model(an.MessagesRequest, body)))

    mark = {"cache_control": {"type": "ephemeral"}}
    first = [{"role": "user", "content": [{"type": "text", "text": "Name a river.", **mark}]}]
    later = [
        {"role": "user", "content": [{"type": "text", "text": "Name a river."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The Nile."}]},
        {"role": "user", "content": [{"type": "text", "text": "Another?", **mark}]},
    ]
    billing = "x-anthropic-billing-header: cc_version=2.1; cch=%s;"
    one, two = translated(first, billing % "a1"), translated(later, billing % "b2")
    assert len(one) == 3 and two[:3] == one


def test_claude_codes_mid_conversation_system_message_keeps_its_place() -> None:
    """What Claude Code 2.1.332 sent on three consecutive turns (captured, ``-p`` then
    ``--continue``): its 9 kB environment block is a ``system`` message after the first
    user turn, sent as blocks with a cache mark on the first turn and as a plain string
    on later ones. Hoisted into the system prompt either way, it never breaks the chain.
    Nothing else changed between the turns but the turns added."""

    def translated(messages: list[dict[str, Any]]) -> list[str]:
        body = {"model": "claude-x", "max_tokens": 100, "system": "Be an agent.",
                "messages": messages}  # fmt: skip
        return prefix_chain(to_chat_request(parse_model(an.MessagesRequest, body)))

    reminder = {"type": "text", "text": "<system-reminder>gitStatus: clean</system-reminder>"}
    opening = {"role": "user", "content": [reminder, {"type": "text", "text": "Say hello."}]}
    environment = "# Environment\nPrimary working directory: /home/me/project"
    mark = {"cache_control": {"type": "ephemeral"}}
    first = [
        opening,
        {"role": "system", "content": [{"type": "text", "text": environment, **mark}]},
    ]
    second = [
        opening,
        {"role": "system", "content": environment},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello there."}]},
        {"role": "user", "content": [{"type": "text", "text": "Say it again.", **mark}]},
    ]
    one, two = translated(first), translated(second)
    assert two[: len(one)] == one and len(two) > len(one)
