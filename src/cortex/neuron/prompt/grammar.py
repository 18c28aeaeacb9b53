"""GBNF grammars that make a model's output parse: JSON, a JSON schema, or a tool call.

The JSON-schema conversion is llama.cpp's own (shipped in llama-cpp-python);
we only wrap its output in the tool-call markup each model family expects.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, PRIMITIVE_RULES, BuiltinRule, SchemaConverter

from cortex.errors import InvalidRequest
from cortex.neuron.prompt.toolcalls import ToolFormat

# Markup around one call, per format; the call itself is {"name": ..., "arguments": {...}}.
_CALL_MARKUP: dict[ToolFormat, tuple[str, str]] = {
    "hermes": ("<tool_call>\n", "\n</tool_call>"),
    "mistral": ("[TOOL_CALLS][", "]"),
    "llama3_json": ("", ""),
}


def _literal(text: str) -> str:
    return json.dumps(text)  # GBNF string literals escape like JSON strings


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# Non-negative forms of llama.cpp's own integer and number rules (no leading "-").
_NON_NEGATIVE = {
    "integer": "integral-part space",
    "number": 'integral-part ("." decimal-part)? ([eE] [-+]? integral-part)? space',
}


# A character of a JSON string. llama-cpp-python 0.3.36's converter admits raw control
# characters here (llama.cpp's own converter does not), which JSON forbids: a sampled
# newline inside a string made a schema-constrained answer unparseable.
_JSON_STRING_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', []
)


class _BoundedConverter(SchemaConverter):
    """llama.cpp's converter ignores numeric bounds, so output could break the schema.

    The common bound (a non-negative integer or number) becomes a grammar rule; any
    other bound is refused up front rather than silently not enforced.
    """

    def visit(self, schema: dict, name: str) -> str:
        kind = schema.get("type") if isinstance(schema, dict) else None
        bounds = {k: schema[k] for k in _BOUNDS if k in schema} if kind else {}
        if kind in ("integer", "number") and bounds:
            if bounds != {"minimum": 0}:
                raise InvalidRequest(
                    f"JSON schema bounds {bounds} on a {kind} cannot be enforced by the "
                    "grammar; only minimum 0 is supported.",
                    param="response_format",
                )
            primitive = "number" if kind == "number" else "integer"
            # the primitive's helper rules (integral-part, decimal-part) come with it
            self._add_primitive(primitive, PRIMITIVE_RULES[primitive])
            return self._add_rule(name or "root", _NON_NEGATIVE[kind])
        return super().visit(schema, name)

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        return super()._add_primitive(name, _JSON_STRING_CHAR if name == "char" else rule)


# What a schema may ask of the grammar. llama.cpp's GBNF parser expands a repetition
# ``x{m,n}`` into nested rules and parses them recursively: a count of ~30000 (a
# ``maxLength``) overflows the native stack and kills the process. Deep nesting does
# the same to the Python converter. Both are refused up front, with the limit named.
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_NODES = 5_000
MAX_REPETITION = 1_000
MAX_GRAMMAR_BYTES = 256 * 1024
_REPETITION = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_COUNT_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
)


def _check_schema(schema: Any, param: str) -> None:
    """Refuse a schema the grammar path cannot compile safely (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise InvalidRequest(
                f"The JSON schema is too large for a grammar (over {MAX_SCHEMA_NODES} parts).",
                param=param,
            )
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequest(
                f"The JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels.", param=param
            )
        if isinstance(node, dict):
            for keyword in _COUNT_KEYWORDS:
                count = node.get(keyword)
                if isinstance(count, int | float) and count > MAX_REPETITION:
                    raise InvalidRequest(
                        f"JSON schema {keyword} {count} is over the grammar's limit of "
                        f"{MAX_REPETITION} repetitions.",
                        param=param,
                    )
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                _check_counts(pattern, f"JSON schema pattern {pattern[:40]!r}", param)
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)


def _check_counts(text: str, what: str, param: str) -> None:
    for low, high in _REPETITION.findall(text):
        count = max(int(low), int(high or 0))
        if count > MAX_REPETITION:
            raise InvalidRequest(
                f"{what} asks for {count} repetitions; the grammar's limit is {MAX_REPETITION}.",
                param=param,
            )


def _check_grammar(text: str, param: str) -> str:
    """The generated GBNF within the parser's safe limits."""
    if len(text) > MAX_GRAMMAR_BYTES:
        raise InvalidRequest(
            f"The JSON schema makes a grammar over {MAX_GRAMMAR_BYTES // 1024} KiB.", param=param
        )
    _check_counts(text, "The JSON schema", param)
    return text


def _convert(
    schema: dict[str, Any],
    rule: str,
    prop_order: list[str] | None = None,
    param: str = "response_format",
) -> SchemaConverter:
    converter = _BoundedConverter(
        prop_order={name: i for i, name in enumerate(prop_order or [])},
        allow_fetch=False,  # a schema never makes the node fetch a URL
        dotall=False,
        raw_pattern=False,
    )
    _check_schema(schema, param)
    try:
        converter.visit(converter.resolve_refs(schema, "request"), rule)
    except InvalidRequest:
        raise
    except RecursionError:
        raise InvalidRequest(
            "The JSON schema nests too deeply for a grammar.", param=param
        ) from None
    except (KeyError, ValueError, TypeError, AssertionError, NotImplementedError) as exc:
        raise InvalidRequest(f"Unsupported JSON schema: {exc}", param=param) from exc
    return converter


def json_object_grammar() -> str:
    return JSON_GBNF


def json_schema_grammar(schema: dict[str, Any]) -> str:
    if not isinstance(schema, dict):
        raise InvalidRequest("json_schema.schema must be an object", param="response_format")
    return _check_grammar(_convert(schema, "").format_grammar(), "response_format")


def tool_call_grammar(tools: list[dict[str, Any]], fmt: ToolFormat) -> str:
    """Exactly one call to one of ``tools`` (OpenAI function definitions), in ``fmt``'s markup."""
    choices = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["name"]},
                "arguments": tool.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema = choices[0] if len(choices) == 1 else {"anyOf": choices}
    converter = _convert(schema, "call", prop_order=["name", "arguments"], param="tools")
    opening, closing = _CALL_MARKUP[fmt]
    parts = [_literal(opening)] if opening else []
    parts.append("call")
    if closing:
        parts.append(_literal(closing))
    # the converter has no public way to add a rule around what it generated
    converter._add_rule("root", " ".join(parts))
    return _check_grammar(converter.format_grammar(), "tools")
