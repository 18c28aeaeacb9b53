"""GBNF grammars that make a model's output parse: JSON, a JSON schema, or a tool call.

The JSON-schema conversion is llama.cpp's own (shipped in llama-cpp-python);
we only wrap its output in the tool-call markup each model family expects.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, PRIMITIVE_RULES, SchemaConverter

from cortex.errors import InvalidRequest
from cortex.neuron.toolcalls import ToolFormat

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


def _convert(
    schema: dict[str, Any], rule: str, prop_order: list[str] | None = None
) -> SchemaConverter:
    converter = _BoundedConverter(
        prop_order={name: i for i, name in enumerate(prop_order or [])},
        allow_fetch=False,  # a schema never makes the node fetch a URL
        dotall=False,
        raw_pattern=False,
    )
    try:
        converter.visit(converter.resolve_refs(schema, "request"), rule)
    except InvalidRequest:
        raise
    except (KeyError, ValueError, TypeError, AssertionError, NotImplementedError) as exc:
        raise InvalidRequest(f"Unsupported JSON schema: {exc}", param="response_format") from exc
    return converter


def json_object_grammar() -> str:
    return JSON_GBNF


def json_schema_grammar(schema: dict[str, Any]) -> str:
    if not isinstance(schema, dict):
        raise InvalidRequest("json_schema.schema must be an object", param="response_format")
    return _convert(schema, "").format_grammar()


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
    converter = _convert(schema, "call", prop_order=["name", "arguments"])
    opening, closing = _CALL_MARKUP[fmt]
    parts = [_literal(opening)] if opening else []
    parts.append("call")
    if closing:
        parts.append(_literal(closing))
    # the converter has no public way to add a rule around what it generated
    converter._add_rule("root", " ".join(parts))
    return converter.format_grammar()
