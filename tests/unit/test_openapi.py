"""``/openapi.json``: a valid OpenAPI 3.1 document that describes every API route, with
error envelopes as the error handlers really write them.

(tests/e2e/test_schemathesis.py checks the document against the running gateway.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.definitions import OPENAPI_31

from cortex.errors import (
    AuthenticationFailed,
    CortexError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    PreflightRejected,
    RelayedError,
)
from cortex.gateway.app import ROUTES
from cortex.gateway.openapi import openapi_document, openapi_json
from cortex.protocol.errors import anthropic_error_body, anthropic_status, openai_error_body

OLLAMA_ROUTES = [
    "chat",
    "generate",
    "embed",
    "embeddings",
    "tags",
    "ps",
    "show",
    "pull",
    "delete",
    "version",
]
# ROUTES left out of the document, each with its reason. Any other route must be in it.
UNDOCUMENTED = {
    "/": "a liveness probe for Claude Code (HEAD /); /health is the documented one",
    "/openapi.json": "the document itself",
    "/fleet/stats": "the /ui charts' data, shaped for its script; no wire type",
    "/ui": "the dashboard page (HTML)",
    "/ui/{asset}": "the dashboard's script and stylesheet",
    # Ollama's API: its clients follow Ollama's own reference, not an OpenAPI document;
    # docs/ollama.md says what cortex serves of it and how it differs.
    **{f"/api/{name}": "Ollama's API (docs/ollama.md)" for name in OLLAMA_ROUTES},
}
METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "trace"}


def validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    """Validates instances against ``components/schemas/<name>`` of ``document``."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return Draft202012Validator(root)


def refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        return found.union(*(refs(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(refs(item) for item in value))
    return set()


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    # the OpenAPI Initiative's schema of 3.1 documents, as schemathesis ships it
    Draft202012Validator(OPENAPI_31).validate(document)
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_reference_resolves() -> None:
    document = openapi_document()
    names = set(document["components"]["schemas"])
    found = refs(document)
    assert found
    assert {ref.removeprefix("#/components/schemas/") for ref in found} <= names


def test_every_route_is_documented_with_its_methods_unless_listed() -> None:
    paths = openapi_document()["paths"]
    assert set(UNDOCUMENTED) <= {route.path for route in ROUTES}  # no stale entry
    for route in ROUTES:
        if route.path in UNDOCUMENTED:
            continue
        assert route.path in paths, f"{route.path} is not in /openapi.json"
        # Starlette adds HEAD to GET routes; the document lists what clients use
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        assert methods == set(paths[route.path]) & METHODS, route.path


def test_every_route_with_a_body_documents_it() -> None:
    paths = openapi_document()["paths"]
    with_body = {"/fleet/defrag": False}  # the one POST route that reads no body
    for route in ROUTES:
        if "POST" not in (route.methods or ()) or route.path in UNDOCUMENTED:
            continue
        operation = paths[route.path]["post"]
        assert ("requestBody" in operation) == with_body.get(route.path, True), route.path


def test_streams_are_documented_as_event_streams() -> None:
    paths = openapi_document()["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/messages"):
        assert "text/event-stream" in paths[path]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" not in paths["/v1/embeddings"]["post"]["responses"]["200"]["content"]


ERRORS: list[CortexError] = [
    InvalidRequest("Invalid request: messages: Field required", param="messages"),
    AuthenticationFailed("Invalid or missing API key", code="invalid_api_key"),
    ModelNotFound("nope", known=["a", "b"]),
    Overloaded("full", retry_after_s=2),
    PreflightRejected("quant_required", model_id="m", detail="Which one?", suggestion="Pick."),
    RelayedError("from a node", status=503, details={"kind": "x"}),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_error_envelopes_are_as_documented(error: CortexError) -> None:
    document = openapi_document()
    validator(document, "ErrorResponse").validate(openai_error_body(error))
    validator(document, "ErrorEvent").validate(anthropic_error_body(error))
    # each route documents the status it answers with, in its dialect's envelope
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    messages = document["paths"]["/v1/messages"]["post"]["responses"]
    assert str(error.status) in chat
    assert str(anthropic_status(error)) in messages
    assert messages[str(anthropic_status(error))]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEvent"
    }


def test_the_served_bytes_are_the_document_built_once() -> None:
    assert openapi_document() is openapi_document()
    assert json.loads(openapi_json()) == openapi_document()
