"""Tool-call parsing: whole outputs per format, and streams split every way."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.neuron.prompt.toolcalls import (
    ParsedToolCall,
    ToolCallDelta,
    ToolCallStreamParser,
    ToolFormat,
    detect_format,
    parse_tool_calls,
)

MARKUP = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>")
ID = re.compile(r"call_[0-9a-f]{24}")

Call = tuple[str, dict[str, Any]]

# (format, output, expected content, expected calls). Markup must never reach the
# content of these unless the expected content itself holds it (malformed output).
SAMPLES: list[tuple[ToolFormat, str, str, list[Call]]] = [
    (
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "hermes",
        '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "parameters": {"y": [1, "}"]}}\n</tool_call>',
        "",
        [("a", {"x": 1}), ("b", {"y": [1, "}"]})],
    ),
    (
        "hermes",
        'Let me check <that>.\n\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n',
        "Let me check <that>.",
        [("f", {})],
    ),
    (
        "hermes",
        'Voilà 🌍 <tool_call>{"name": "f", "arguments": "{\\"s\\": \\"é\\"}"}</tool_call> fin',
        "Voilà 🌍  fin",
        [("f", {"s": "é"})],
    ),
    (
        "hermes",
        'Try <tool_call>{"name": "x", "arguments": {</tool_call> again',
        'Try <tool_call>{"name": "x", "arguments": {</tool_call> again',
        [],
    ),
    (
        "hermes",
        '<tool_call>{"name": <tool_call>{"name": "g", "arguments": {"q": "\\\\"}}</tool_call>',
        '<tool_call>{"name":',
        [("g", {"q": "\\"})],
    ),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n', "", [("f", {"a": 1})]),
    ("hermes", '<tool_call>\n{"name": "f", "argu', '<tool_call>\n{"name": "f", "argu', []),
    ("hermes", "  Hi <b>world</b>, a < b and <tool  \n", "Hi <b>world</b>, a < b and <tool", []),
    (
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "llama3_json",
        ' <|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "arguments": {"s": "}{"}}',
        "",
        [("a", {}), ("b", {"s": "}{"})],
    ),
    (
        "llama3_json",
        '{"name": "a", "parameters": {"x": 1}}\n{"name": "b", "parameters": {"y": 2}}\nDone.',
        "Done.",
        [("a", {"x": 1}), ("b", {"y": 2})],
    ),
    (
        "llama3_json",
        'I will call {"name": "a", "parameters": {}}',
        'I will call {"name": "a", "parameters": {}}',
        [],
    ),
    ("llama3_json", '{"name": "Bob", "age": 3}', '{"name": "Bob", "age": 3}', []),
    (
        "llama3_json",
        '<|python_tag|>{"name": "a", "parameters": {',
        '<|python_tag|>{"name": "a", "parameters": {',
        [],
    ),
    ("llama3_json", "\n  Plain answer.\n", "Plain answer.", []),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "mistral",
        'Sure. [TOOL_CALLS] [{"name": "a", "arguments": {"x": "]"}},'
        ' {"name": "b", "arguments": {}}]\n',
        "Sure.",
        [("a", {"x": "]"}), ("b", {})],
    ),
    (
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "mistral",
        'Ok[TOOL_CALLS]mcp__fs.read[ARGS]{"p": "a"}[TOOL_CALLS]b[ARGS] {"y": "}"}',
        "Ok",
        [("mcp__fs.read", {"p": "a"}), ("b", {"y": "}"})],
    ),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "a", "arguments": {]',
        '[TOOL_CALLS][{"name": "a", "arguments": {]',
        [],
    ),
    ("mistral", "[TOOL_CALLS]not a call", "[TOOL_CALLS]not a call", []),
    ("mistral", "Arrays [1, 2] and [TOOL", "Arrays [1, 2] and [TOOL", []),
]


def _stream(fmt: ToolFormat, pieces: list[str]) -> tuple[str, list[Call], list[str]]:
    """Feed pieces; check the delta rules; return content, reassembled calls, content chunks."""
    parser = ToolCallStreamParser(fmt)
    chunks: list[str] = []
    deltas: list[ToolCallDelta] = []
    for piece in pieces:
        content, new = parser.feed(piece)
        chunks.append(content)
        deltas += new
    content, new = parser.finish()
    chunks.append(content)
    deltas += new

    ids: dict[int, str] = {}
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for delta in deltas:
        if delta.index not in ids:
            # The first delta of an index names the call; ids and names come exactly once.
            assert delta.index == len(ids), "indices must be contiguous from 0"
            assert delta.id is not None and delta.name is not None
            ids[delta.index], names[delta.index] = delta.id, delta.name
            arguments[delta.index] = delta.arguments
        else:
            assert delta.id is None and delta.name is None
            arguments[delta.index] += delta.arguments
    calls = parser.calls
    assert [call.id for call in calls] == [ids[i] for i in range(len(ids))]
    assert [call.arguments for call in calls] == [arguments[i] for i in range(len(ids))]
    assert all(ID.fullmatch(call.id) for call in calls)
    reassembled = [(names[i], json.loads(arguments[i])) for i in range(len(ids))]
    return "".join(chunks), reassembled, chunks


def _as_pairs(calls: list[ParsedToolCall]) -> list[Call]:
    return [(call.name, json.loads(call.arguments)) for call in calls]


def _check_stream(fmt: ToolFormat, text: str, pieces: list[str]) -> None:
    assert "".join(pieces) == text
    content, calls = parse_tool_calls(text, fmt)
    streamed, streamed_calls, chunks = _stream(fmt, pieces)
    assert streamed == content
    assert streamed_calls == _as_pairs(calls)
    if not any(mark in content for mark in MARKUP):
        assert not any(mark in chunk for chunk in chunks for mark in MARKUP)


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), SAMPLES)
def test_whole_output(fmt: ToolFormat, text: str, content: str, calls: list[Call]) -> None:
    got_content, got_calls = parse_tool_calls(text, fmt)
    assert got_content == content
    assert _as_pairs(got_calls) == calls
    assert len({call.id for call in got_calls}) == len(got_calls)


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), SAMPLES)
def test_stream_split_everywhere(
    fmt: ToolFormat, text: str, content: str, calls: list[Call]
) -> None:
    for cut in range(len(text) + 1):
        _check_stream(fmt, text, [text[:cut], text[cut:]])
    _check_stream(fmt, text, list(text))
    _check_stream(fmt, text, [text])


def test_arguments_are_compact_json_of_the_object() -> None:
    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a": [1, 2]}}', "hermes")
    assert calls[0].arguments == '{"a":[1,2]}'


def test_call_is_emitted_before_the_output_ends() -> None:
    parser = ToolCallStreamParser("hermes")
    content, deltas = parser.feed('Hi <tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert content == "Hi"
    assert deltas[0].name == "f" and deltas[0].id == parser.calls[0].id
    assert "".join(delta.arguments for delta in deltas) == "{}"


def test_possible_marker_is_held_back_until_clear() -> None:
    parser = ToolCallStreamParser("hermes")
    assert parser.feed("Hello <tool") == ("Hello", [])
    assert parser.feed("box>") == (" <toolbox>", [])


@pytest.mark.parametrize(
    ("template", "fmt"),
    [
        ("{{ '[TOOL_CALLS]' + tool_calls | tojson }}", "mistral"),
        ("{{- '<|python_tag|>' }}", "llama3_json"),
        ("{%- if message.role == 'ipython' %}", "llama3_json"),
        ("<tool_call>\n{{ tool_call | tojson }}\n</tool_call>", "hermes"),
        (None, "hermes"),
    ],
)
def test_detect_format(template: str | None, fmt: ToolFormat) -> None:
    assert detect_format(template) == fmt


# Content that cannot spell a marker but exercises the hold-back of '<' and '['.
_content = st.text(alphabet='ab <>{}[];:\n\té🌍"\\', max_size=12)
_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_values = st.one_of(
    st.integers(), st.booleans(), st.none(), st.text(max_size=8), st.lists(st.integers())
)
_args = st.dictionaries(st.text(max_size=6), _values, max_size=3)


def _render(fmt: ToolFormat, pre: str, calls: list[Call], post: str, old: bool) -> tuple[str, str]:
    """(output text, expected content) for calls written in ``fmt``."""
    objects = [json.dumps({"name": name, "arguments": args}) for name, args in calls]
    if fmt == "hermes":
        body = "\n".join(f"<tool_call>\n{obj}\n</tool_call>" for obj in objects)
        return pre + body + post, (pre + "\n" * max(len(calls) - 1, 0) + post).strip()
    if fmt == "mistral":
        if not calls:
            return pre + post, (pre + post).strip()
        if old:
            body = "[TOOL_CALLS]" + "[" + ", ".join(objects) + "]"
        else:
            body = "".join(f"[TOOL_CALLS]{n}[ARGS]{json.dumps(a)}" for n, a in calls)
        return pre + body + post, (pre + post).strip()
    if not calls:
        return pre, pre.strip()
    tag = "<|python_tag|>" if old else ""
    calls_text = ";\n".join(json.dumps({"name": n, "parameters": a}) for n, a in calls)
    return tag + calls_text, ""


@settings(max_examples=200, deadline=None)
@given(
    fmt=st.sampled_from(["hermes", "llama3_json", "mistral"]),
    pre=_content,
    post=_content,
    calls=st.lists(st.tuples(_names, _args), max_size=3),
    old=st.booleans(),
    data=st.data(),
)
def test_random_splits_reassemble(
    fmt: ToolFormat, pre: str, post: str, calls: list[Call], old: bool, data: st.DataObject
) -> None:
    if fmt == "llama3_json" and pre.lstrip().startswith("{"):
        pre = "x" + pre  # an output starting with '{' is a call attempt, not plain content
    text, content = _render(fmt, pre, calls, post, old)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]

    got_content, got_calls = parse_tool_calls(text, fmt)
    assert got_content == content
    assert _as_pairs(got_calls) == calls
    _check_stream(fmt, text, pieces)
