import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.prompt.grammar import json_schema_grammar, tool_call_grammar


def rules(grammar: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.splitlines() if " ::= " in line)


def test_non_negative_bounds_become_grammar_rules() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0},
            "x": {"type": "number", "minimum": 0},
        },
        "required": ["n", "x"],
    }
    table = rules(json_schema_grammar(schema))
    assert '"-"' not in table["n"] and '"-"' not in table["x"]
    assert '"."' in table["x"]


@pytest.mark.parametrize(
    "bound", [{"minimum": 3}, {"maximum": 10}, {"exclusiveMinimum": 0}, {"minimum": -5}]
)
def test_bounds_the_grammar_cannot_enforce_are_refused(bound) -> None:
    with pytest.raises(InvalidRequest, match="cannot be enforced"):
        json_schema_grammar({"type": "integer", **bound})


def test_tool_call_grammar_wraps_the_call_in_its_markup() -> None:
    tool = {"name": "f", "parameters": {"type": "object", "properties": {}}}
    assert rules(tool_call_grammar([tool], "hermes"))["root"] == (
        '"<tool_call>\\n" call "\\n</tool_call>"'
    )
    assert rules(tool_call_grammar([tool], "llama3_json"))["root"] == "call"
