"""Tool-call parsing: whole outputs per format, and streams split every way."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.neuron.prompt.toolcalls import (
    _HOLD_LIMIT,
    ParsedToolCall,
    ToolCallDelta,
    ToolCallStreamParser,
    ToolFormat,
    detect_format,
    parse_tool_calls,
)

MARKUP = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>")
ID = re.compile(r"call_[0-9a-f]{24}")

# (name, arguments): a dict for a call whose arguments closed, the raw text for one cut short.
Call = tuple[str, dict[str, Any] | str]

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
    (  # the model closed the call before its arguments: the call stays, cut short
        "hermes",
        'Try <tool_call>{"name": "x", "arguments": {</tool_call> again',
        "Try  again",
        [("x", "{")],
    ),
    (  # keys in another order: judged whole
        "hermes",
        '<tool_call>{"arguments": {"x": 1}, "name": "f"}</tool_call>',
        "",
        [("f", {"x": 1})],
    ),
    (  # more keys after the arguments are dropped up to </tool_call>
        "hermes",
        '<tool_call>{"name": "f", "arguments": {"x": 1}, "id": 7}</tool_call> ok',
        "ok",
        [("f", {"x": 1})],
    ),
    (
        "hermes",
        '<tool_call>{"name": "f", "arguments": {"s": "</tool_call> <tool_call>"}}</tool_call>',
        "",
        [("f", {"s": "</tool_call> <tool_call>"})],
    ),
    ("hermes", "I use <tool_call> tags", "I use <tool_call> tags", []),
    (
        "hermes",
        '<tool_call>{"name": "f", "arguments": {"a": 1}}\nDone.',
        "Done.",
        [("f", {"a": 1})],
    ),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_ca', "", [("f", {"a": 1})]),
    (
        "hermes",
        '<tool_call>\n{"name": "get_weather", "parameters": {"city": "Pa',
        "",
        [("get_weather", '{"city": "Pa')],
    ),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1</tool_ca', "", [("f", '{"a": 1')]),
    ("hermes", "Hi <tool_call>\n", "Hi", []),
    (
        "hermes",
        '<tool_call>{"name": <tool_call>{"name": "g", "arguments": {"q": "\\\\"}}</tool_call>',
        '<tool_call>{"name":',
        [("g", {"q": "\\"})],
    ),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n', "", [("f", {"a": 1})]),
    ("hermes", '<tool_call>\n{"name": "f", "argu', "", []),
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
    ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {', "", [("a", "{")]),
    ("llama3_json", '{"name": "Bo', '{"name": "Bo', []),
    (
        "llama3_json",
        '{"parameters": {"x": 1}, "name": "a"}; {"name": "b", "parameters": {}}',
        "",
        [("a", {"x": 1}), ("b", {})],
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
        '[TOOL_CALLS][{"name": "a", "arguments": {"x": "]',
        "",
        [("a", '{"x": "]')],
    ),
    (
        "mistral",
        '[TOOL_CALLS][{"arguments": {}, "name": "a"}, {"bad": 1}]',
        '[TOOL_CALLS][{"arguments": {}, "name": "a"}, {"bad": 1}]',
        [],
    ),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"arguments": {}, "name": "b"}] after',
        "after",
        [("a", {}), ("b", {})],
    ),
    ("mistral", '[TOOL_CALLS]f[ARGS]{"a": [1,', "", [("f", '{"a": [1,')]),
    ("mistral", "Calling [TOOL_CALLS]get_wea", "Calling", []),
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
    assert all(call.complete for call in calls[:-1]), "only the last call can be cut short"
    reassembled = [
        (names[i], json.loads(arguments[i]) if calls[i].complete else arguments[i])
        for i in range(len(ids))
    ]
    return "".join(chunks), reassembled, chunks


def _as_pairs(calls: list[ParsedToolCall]) -> list[Call]:
    return [
        (call.name, json.loads(call.arguments) if call.complete else call.arguments)
        for call in calls
    ]


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


def test_arguments_are_the_text_the_model_wrote() -> None:
    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a": [1, 2]}}', "hermes")
    assert calls[0].arguments == '{"a": [1, 2]}'
    # Judged whole (arguments as a JSON string): decoded, then compact.
    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}', "hermes")
    assert calls[0].arguments == '{"a":1}'


def test_call_is_emitted_before_the_output_ends() -> None:
    parser = ToolCallStreamParser("hermes")
    content, deltas = parser.feed('Hi <tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert content == "Hi"
    assert deltas[0].name == "f" and deltas[0].id == parser.calls[0].id
    assert "".join(delta.arguments for delta in deltas) == "{}"


def test_arguments_stream_as_they_are_generated() -> None:
    parser = ToolCallStreamParser("hermes")
    assert parser.feed("<tool_call>\n") == ("", [])
    assert parser.feed('{"name": "write", "argu') == ("", [])  # the head, held while it may be one
    content, deltas = parser.feed('ments": {')
    assert content == "" and [(d.index, d.name, d.arguments) for d in deltas] == [(0, "write", "{")]
    value = '"text": "' + 'a line \\"quoted\\" <b>\\n' * 500 + '"'
    sent = "{"
    for char in value:
        content, deltas = parser.feed(char)
        assert content == ""
        sent += "".join(delta.arguments for delta in deltas)
    # Nothing but an escape waiting for its second character is ever held back.
    assert sent == "{" + value
    content, deltas = parser.feed("}}\n</tool_call>")
    assert content == "" and "".join(d.arguments for d in deltas) == "}"
    assert parser.finish() == ("", [])
    (call,) = parser.calls
    assert call.complete and json.loads(call.arguments)["text"].startswith("a line")


def test_held_back_text_is_a_few_characters_while_arguments_stream() -> None:
    parser = ToolCallStreamParser("hermes")
    parser.feed('<tool_call>{"name": "f", "arguments": {')
    value = '"s": "' + "x\\n<" * 300 + '"'
    fed, sent = "{", "{"
    for char in value:
        fed += char
        _, deltas = parser.feed(char)
        sent += "".join(delta.arguments for delta in deltas)
        assert fed.startswith(sent) and len(fed) - len(sent) <= 1


def test_a_cut_call_keeps_its_partial_arguments() -> None:
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"q": "ab', "hermes")
    assert content == ""
    assert [(c.name, c.arguments, c.complete) for c in calls] == [("f", '{"q": "ab', False)]


def test_a_cut_anywhere_in_a_call_shows_no_markup() -> None:
    head = '<tool_call>\n{"name": "get_weather", "arguments": '
    args = '{"city": "Paris", "unit": "celsius"}'
    text = head + args + "}\n</tool_call>"
    for forced in (False, True):
        for cut in range(len(text) + 1):
            content, calls = parse_tool_calls(text[:cut], "hermes", forced)
            assert not any(mark in content for mark in MARKUP), (cut, content)
            if forced:
                assert content == ""
            elif cut < len("<tool_call>"):  # a prefix of the marker alone may be text
                assert content == text[:cut].strip()
            else:
                assert content == ""
            if cut <= len(head):
                assert calls == []
                continue
            (call,) = calls
            assert call.name == "get_weather" and args.startswith(call.arguments)
            assert call.complete == (cut >= len(head) + len(args))


def test_forced_output_never_has_content() -> None:
    for text in ("<tool_", "<tool_call>", '<tool_call>\n{"na', "\n"):
        assert parse_tool_calls(text, "hermes", forced=True) == ("", [])
    assert parse_tool_calls("[TOOL_CALLS][", "mistral", forced=True) == ("", [])


def test_markup_not_followed_by_json_is_content_at_once() -> None:
    parser = ToolCallStreamParser("hermes")
    assert parser.feed("Use <tool_call>") == ("Use", [])
    assert parser.feed(" tags") == (" <tool_call> tags", [])


def test_a_call_not_written_head_first_is_held_at_most_the_cap() -> None:
    parser = ToolCallStreamParser("hermes")
    assert parser.feed('<tool_call>{"arguments": "') == ("", [])
    released, fed = "", 0
    while not released:
        released, _ = parser.feed("x" * 100)
        fed += 100
        assert fed <= _HOLD_LIMIT + 200
    assert released.startswith('<tool_call>{"arguments": "xxx')
    assert parser.feed("yy") == ("yy", [])
    # The cap is on positions, so the whole output parses the same way.
    text = '<tool_call>{"arguments": {}, "name": "f", "pad": "' + "x" * _HOLD_LIMIT + '"}'
    content, calls = parse_tool_calls(text + "</tool_call>", "hermes")
    assert calls == [] and content == text + "</tool_call>"


@pytest.mark.parametrize(
    ("fmt", "opening"),
    [("mistral", "[TOOL_CALLS]["), ("mistral", "[TOOL_CALLS]"), ("llama3_json", "")],
)
def test_formats_judged_whole_honour_the_cap_too(fmt: ToolFormat, opening: str) -> None:
    parser = ToolCallStreamParser(fmt)
    parser.feed(opening + '{"parameters": {"s": "')
    released = ""
    for _ in range(_HOLD_LIMIT // 100 + 2):
        content, _ = parser.feed("x" * 100)
        released += content
    assert released.startswith(opening + '{"parameters"')


def test_mistral_v11_arguments_stream() -> None:
    parser = ToolCallStreamParser("mistral")
    assert parser.feed("[TOOL_CALLS]read_file[AR") == ("", [])
    content, deltas = parser.feed('GS]{"path": "a')
    assert content == "" and [(d.name, d.arguments) for d in deltas] == [
        ("read_file", '{"path": "a')
    ]
    _, deltas = parser.feed('.txt"}')
    assert [d.arguments for d in deltas] == ['.txt"}']


def test_head_only_while_it_can_be_one() -> None:
    parser = ToolCallStreamParser("hermes")
    assert parser.feed('<tool_call>{"name": "f", "arguments": ') == ("", [])
    # arguments as a JSON string: not streamed, judged whole when the call closes
    assert parser.feed('"{}"}') == ("", [])
    content, deltas = parser.feed("</tool_call>")
    assert content == "" and [(d.name, d.arguments) for d in deltas] == [("f", "{}")]


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


@settings(max_examples=200, deadline=None)
@given(
    fmt=st.sampled_from(["hermes", "llama3_json", "mistral"]),
    pre=_content,
    calls=st.lists(st.tuples(_names, _args), min_size=1, max_size=2),
    old=st.booleans(),
    forced=st.booleans(),
    data=st.data(),
)
def test_outputs_cut_short_stream_as_they_parse_whole(
    fmt: ToolFormat,
    pre: str,
    calls: list[Call],
    old: bool,
    forced: bool,
    data: st.DataObject,
) -> None:
    """``max_tokens`` ends an output anywhere: any chunking still agrees with the whole."""
    if fmt == "llama3_json" and pre.lstrip().startswith("{"):
        pre = "x" + pre
    text, _ = _render(fmt, pre, calls, "", old)
    text = text[: data.draw(st.integers(0, len(text)))]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    content, parsed = parse_tool_calls(text, fmt, forced)
    assert [call.name for call in parsed] == [name for name, _ in calls][: len(parsed)]
    if forced:
        assert content == ""
    elif fmt == "hermes" or (fmt == "mistral" and not old):
        assert not any(mark in content for mark in MARKUP)
    parser = ToolCallStreamParser(fmt, forced)
    streamed = "".join(parser.feed(piece)[0] for piece in pieces) + parser.finish()[0]
    assert streamed == content
    assert [(c.name, c.arguments, c.complete) for c in parser.calls] == [
        (c.name, c.arguments, c.complete) for c in parsed
    ]
