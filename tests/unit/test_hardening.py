"""Requests that used to crash a node or answer 500 get a clear 400 instead."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cortex.errors import InvalidRequest, PreflightRejected
from cortex.neuron.files.sources import list_local, local_path, parse_source, prepare_source
from cortex.neuron.prompt import grammar
from cortex.protocol import anthropic as an
from cortex.protocol import openai as oa
from cortex.protocol.fleet import FleetRequest
from cortex.protocol.parsing import parse_body
from cortex.spec import ModelSpec


def _schema_with(keyword: str, count: int) -> dict:
    kind = "string" if "Length" in keyword else "array"
    return {"type": "object", "properties": {"a": {"type": kind, keyword: count}}}


@pytest.mark.parametrize("keyword", ["maxLength", "minLength", "maxItems", "minItems"])
def test_a_huge_repetition_count_is_refused_naming_the_limit(keyword: str) -> None:
    # maxLength 30000 overflowed llama.cpp's grammar parser's stack: a segfault.
    with pytest.raises(InvalidRequest) as caught:
        grammar.json_schema_grammar(_schema_with(keyword, 30000))
    assert f"{keyword} 30000" in caught.value.message
    assert str(grammar.MAX_REPETITION) in caught.value.message


def test_a_count_within_the_limit_still_compiles() -> None:
    text = grammar.json_schema_grammar(_schema_with("maxLength", grammar.MAX_REPETITION))
    assert "root ::=" in text


def test_a_repetition_hidden_in_a_pattern_is_refused() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^a{50000}$"}}}
    with pytest.raises(InvalidRequest, match="50000 repetitions"):
        grammar.json_schema_grammar(schema)


def test_a_forced_tool_with_a_huge_count_is_refused_on_tools() -> None:
    tool = {"name": "f", "parameters": _schema_with("maxItems", 99999)}
    with pytest.raises(InvalidRequest) as caught:
        grammar.tool_call_grammar([tool], "hermes")
    assert caught.value.param == "tools"


def test_a_deep_schema_is_a_400_not_a_recursion_error() -> None:
    schema: dict = {"type": "string"}
    for _ in range(450):
        schema = {"type": "object", "properties": {"a": schema}}
    with pytest.raises(InvalidRequest, match="deeper than"):
        grammar.json_schema_grammar(schema)


def test_deeply_nested_json_is_a_400() -> None:
    raw = b'{"model": "m", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        parse_body(oa.ChatCompletionRequest, raw)


def test_pkg_sources_never_import_a_module() -> None:
    """``pkg:this.nothing/x`` used to import ``this`` (printing the Zen of Python)."""
    code = (
        "from cortex.neuron.files.sources import local_path, parse_source\n"
        "from cortex.errors import InvalidRequest\n"
        "for text in ('pkg:this.nothing/x', 'pkg:this/x'):\n"
        "    try:\n"
        "        local_path(parse_source(text))\n"
        "    except InvalidRequest as exc:\n"
        "        print('refused', exc.message)\n"
        "import sys; print('this' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Beautiful is better than ugly" not in out.stdout
    assert out.stdout.splitlines()[-1] == "False"
    assert "top-level Python package" in out.stdout


def test_a_file_source_that_is_not_a_model_does_not_list_the_directory(tmp_path) -> None:
    (tmp_path / "secret-name.txt").write_text("x")
    spec = ModelSpec(id="m", source=f"file:{tmp_path}")
    with pytest.raises(PreflightRejected) as caught:
        prepare_source(spec, devices_available=None, free_mb=None)
    assert "secret-name" not in json.dumps(caught.value.message)
    assert "not a model file or directory" in caught.value.message


def test_listing_a_huge_tree_stops_early(tmp_path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "model.gguf").write_bytes(b"x")
    (tmp_path / "top.gguf").write_bytes(b"x")
    listed = [name for name, _ in list_local(local_path(parse_source(f"file:{tmp_path}")))]
    assert listed == ["top.gguf"]  # not walked past its first folder level


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]},
         "content[0].text must be a string"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "tool_call_id"),
        # a part of no type, or of a type not a string, crashed the engine naming the kinds
        ({"messages": [{"role": "user", "content": [{"type": ["text"]}]}]},
         "content[0].type must be a string"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}, {"text": "x"}]}]},
         "content[1].type must be a string"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "12"}, "max_tokens"),
    ],
)  # fmt: skip
def test_malformed_chat_fields_are_a_400_naming_them(body: dict, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(oa.ChatCompletionRequest, json.dumps({"model": "m", **body}).encode())
    assert says in caught.value.message


@pytest.mark.parametrize("kind", [{}, ["text"], 3, None])
def test_an_anthropic_block_whose_type_is_no_string_is_a_400(kind: object) -> None:
    # a dict or list as the type crashed the block discriminator (unhashable): a 500
    content = [{"type": kind, "data": ""}]
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": content}]}
    with pytest.raises(InvalidRequest, match=r"messages\.0\.content"):
        parse_body(an.MessagesRequest, json.dumps(body).encode())


def test_a_fleet_request_naming_a_node_by_no_string_is_a_400() -> None:
    # a list as the node crashed the lookup among the fleet's nodes (unhashable): a 500
    with pytest.raises(InvalidRequest, match="node"):
        parse_body(FleetRequest, json.dumps({"model": "m", "node": ["n1"]}).encode())
