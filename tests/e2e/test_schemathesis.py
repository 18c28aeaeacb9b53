"""schemathesis against the real gateway and neuron, driven by the gateway's own
``/openapi.json``: no request it generates may get a 5xx, and every answer must be
what the document says (status, content type, body, each event of a stream).

Bounded for a small CPU: a fixed number of generated requests per operation (positive
and negative), plus the coverage phase's negative cases (a field missing, of the wrong
type, out of range); generation clamped to a few tokens; no stateful testing. Request
bodies name the fleet's real model or one of its aliases, and always say whether they
stream, so that valid requests run the model and both kinds of answer get checked.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from cortex.gateway.openapi import openapi_document
from procs import MODEL, Gateway

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 25
MAX_TOKENS = 8  # each valid generation request runs the model: keep it short
# the names a client may use for the session's model, and one that names nothing
MODEL_NAMES = [MODEL, "small", "claude-haiku-4-5", "no-such-model"]
# request types whose model is chosen among MODEL_NAMES; not the /fleet/load|unload
# body, which would unload the model the rest of the session uses
WITH_MODEL = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "MessagesRequest",
    "CountTokensRequest",
    "ResponsesRequest",
]
# request types that may stream: left optional, "stream" is hardly ever generated
STREAMING = ["ChatCompletionRequest", "CompletionRequest", "MessagesRequest", "ResponsesRequest"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def for_this_fleet(document: dict[str, Any]) -> dict[str, Any]:
    """The document with each request's ``model`` one of the fleet's names, and
    ``stream`` always sent (true or false)."""
    narrowed = copy.deepcopy(document)
    schemas = narrowed["components"]["schemas"]
    for name in WITH_MODEL:
        schemas[name]["properties"]["model"] = {"type": "string", "enum": MODEL_NAMES}
    for name in STREAMING:
        schemas[name]["required"].append("stream")
    return narrowed


def bounded(body: Any, path: str) -> Any:
    """``body`` with its generation capped at ``MAX_TOKENS`` tokens."""
    if not isinstance(body, dict):
        return body
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(field)
        # 5e8 too: an integral float passes for an int
        if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[field] = MAX_TOKENS
    # an OpenAI request without a limit generates up to the end of the context
    unlimited = body.get("max_tokens") is None and body.get("max_completion_tokens") is None
    if path in ("/v1/chat/completions", "/v1/completions") and unlimited:
        body["max_tokens"] = MAX_TOKENS
    if path == "/v1/responses" and body.get("max_output_tokens") is None:
        body["max_output_tokens"] = MAX_TOKENS
    return body


def test_the_document_fuzzed_is_the_one_served(gateway: Gateway) -> None:
    answer = httpx.get(gateway.url + "/openapi.json", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == openapi_document()


# Built here rather than fetched from the gateway a fixture starts: schemathesis's
# fixture loader (``schemathesis.pytest.from_fixture``) fails on pytest 9 (it sets
# ``Node._nodeid``, gone there), and the test above shows this is the document served.
schema = schemathesis.openapi.from_dict(
    for_this_fleet(openapi_document()),
    config=schemathesis.Config.from_dict(
        {
            "seed": 19,  # the same cases on every run: a failure can be replayed
            "request-timeout": 60,
            "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION},
            "phases": {
                "examples": {"enabled": False},  # the document has none
                "coverage": {
                    "enabled": True,
                    "generation": {"mode": "negative"},
                    "unexpected-methods": [],
                },
                "stateful": {"enabled": False},
            },
        }
    ),
)


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    max_examples=EXAMPLES_PER_OPERATION,
)
def test_the_api_answers_as_documented(case: schemathesis.Case, gateway: Gateway) -> None:
    case.body = bounded(case.body, case.path)
    case.call_and_validate(base_url=gateway.url, checks=CHECKS)
