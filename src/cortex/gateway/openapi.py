"""The gateway's API as an OpenAPI 3.1 document, served at ``/openapi.json``.

Every schema comes from the wire types the routes parse and answer with
(``protocol/openai.py``, ``anthropic.py``, ``fleet.py``): requests in pydantic's
validation mode, answers in its serialization mode, all under
``components/schemas``. What the document adds by hand is what no type holds: which
route answers with which status, in which dialect's error envelope, and the shape of
each dialect's event stream (one schema per event, as OpenAPI 3.1 tools read
``text/event-stream``; ``data`` is JSON text, described by ``contentSchema``).

Statuses are the ones the routes really answer (``errors.py`` lists them): a route of
the Anthropic dialect answers 529 where the OpenAI one answers 429, and both may pass
on a neuron's error with its status (``RelayedError``).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from cortex import __version__
from cortex.protocol import admin, fleet
from cortex.protocol import anthropic as an
from cortex.protocol import openai as oa
from cortex.protocol import openai_responses as rs

Schema = dict[str, Any]
Dialect = Literal["openai", "anthropic"]

_REF = "#/components/schemas/{model}"

# (type, mode) of every schema the document refers to.
_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (oa.ChatCompletionRequest, "validation"),
    (oa.CompletionRequest, "validation"),
    (oa.EmbeddingRequest, "validation"),
    (an.MessagesRequest, "validation"),
    (an.CountTokensRequest, "validation"),
    (fleet.FleetRequest, "validation"),
    (admin.KeyCreate, "validation"),
    (admin.KeyUpdate, "validation"),
    (admin.KeyCreated, "serialization"),
    (admin.KeyView, "serialization"),
    (admin.KeyList, "serialization"),
    (admin.UsageReport, "serialization"),
    (rs.ResponsesRequest, "validation"),
    (oa.ChatCompletion, "serialization"),
    (oa.ChatCompletionChunk, "serialization"),
    (oa.Completion, "serialization"),
    (oa.EmbeddingList, "serialization"),
    (oa.ErrorResponse, "serialization"),
    (fleet.ModelListing, "serialization"),
    (an.ModelPage, "serialization"),
    (an.Message, "serialization"),
    (an.TokenCount, "serialization"),
    (an.ErrorEvent, "serialization"),
    (an.MessageStartEvent, "serialization"),
    (an.ContentBlockStartEvent, "serialization"),
    (an.ContentBlockDeltaEvent, "serialization"),
    (an.ContentBlockStopEvent, "serialization"),
    (an.MessageDeltaEvent, "serialization"),
    (an.MessageStopEvent, "serialization"),
    (an.PingEvent, "serialization"),
    (rs.Response, "serialization"),
    (rs.Deleted, "serialization"),
    (rs.InputItemList, "serialization"),
    (rs.LifecycleEvent, "serialization"),
    (rs.OutputItemEvent, "serialization"),
    (rs.ContentPartEvent, "serialization"),
    (rs.TextDeltaEvent, "serialization"),
    (rs.TextDoneEvent, "serialization"),
    (rs.ReasoningDeltaEvent, "serialization"),
    (rs.ReasoningDoneEvent, "serialization"),
    (rs.ArgumentsDeltaEvent, "serialization"),
    (rs.ArgumentsDoneEvent, "serialization"),
    (rs.ErrorEvent, "serialization"),
    (fleet.FleetView, "serialization"),
    (fleet.LoadAnswer, "serialization"),
    (fleet.UnloadAnswer, "serialization"),
    (fleet.DefragAnswer, "serialization"),
    (fleet.GatewayHealth, "serialization"),
    (fleet.Ready, "serialization"),
    (fleet.NotReady, "serialization"),
]

# Names pydantic qualifies with their module because two types share them.
_RENAMED = {
    "cortex__protocol__openai__Usage": "Usage",
    "cortex__protocol__anthropic__Usage": "AnthropicUsage",
    "cortex__protocol__anthropic__Tool": "Tool",
    "cortex__protocol__openai_responses__Tool": "ResponsesTool",
    "cortex__protocol__anthropic__ErrorEvent": "ErrorEvent",
    "cortex__protocol__openai_responses__ErrorEvent": "ResponseErrorEvent",
}


class _Generator(GenerateJsonSchema):
    """pydantic's generator, but for the unions whose member a function picks: the
    Anthropic content blocks, where the block's ``type`` is the member's tag and the
    ``other`` member takes every type no other tag names. pydantic knows nothing of the
    function and would say ``oneOf`` the members: a text block, also an ``OtherBlock``,
    would match two and so none, and a block without ``type`` would match ``TextBlock``
    (whose ``type`` has a default) where the function sends it to ``other``, which
    refuses it."""

    def tagged_union_schema(self, schema: core_schema.TaggedUnionSchema) -> Schema:
        if isinstance(schema["discriminator"], str):
            return super().tagged_union_schema(schema)
        named = sorted(str(tag) for tag in schema["choices"] if tag != "other")
        members = []
        for tag, choice in schema["choices"].items():
            kind = {"const": tag} if tag != "other" else {"type": "string", "not": {"enum": named}}
            picked = {"type": "object", "required": ["type"], "properties": {"type": kind}}
            members.append({"allOf": [self.generate_inner(choice), picked]})
        return {"anyOf": members}


def _ref(name: str) -> Schema:
    return {"$ref": _REF.format(model=name)}


def _json(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _sse_data(payload: Schema) -> Schema:
    """An event's ``data``: JSON text holding ``payload``."""
    return {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": payload,
    }


def _openai_stream(chunk: str) -> Schema:
    """One event of an OpenAI stream: a chunk, an in-band error, or the closing ``[DONE]``."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    _sse_data({"anyOf": [_ref(chunk), _ref("ErrorResponse")]}),
                ]
            }
        },
    }


_ANTHROPIC_EVENTS = {
    "message_start": "MessageStartEvent",
    "content_block_start": "ContentBlockStartEvent",
    "content_block_delta": "ContentBlockDeltaEvent",
    "content_block_stop": "ContentBlockStopEvent",
    "message_delta": "MessageDeltaEvent",
    "message_stop": "MessageStopEvent",
    "ping": "PingEvent",
    "error": "ErrorEvent",
}


def _anthropic_stream() -> Schema:
    """One event of a Messages stream: its name is the ``type`` of its data."""
    return {
        "anyOf": [
            {
                "type": "object",
                "required": ["event", "data"],
                "properties": {"event": {"const": event}, "data": _sse_data(_ref(model))},
            }
            for event, model in _ANTHROPIC_EVENTS.items()
        ]
    }


_RESPONSES_EVENTS = {
    "LifecycleEvent": [
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ],
    "OutputItemEvent": ["response.output_item.added", "response.output_item.done"],
    "ContentPartEvent": ["response.content_part.added", "response.content_part.done"],
    "TextDeltaEvent": ["response.output_text.delta"],
    "TextDoneEvent": ["response.output_text.done"],
    "ReasoningDeltaEvent": ["response.reasoning_text.delta"],
    "ReasoningDoneEvent": ["response.reasoning_text.done"],
    "ArgumentsDeltaEvent": ["response.function_call_arguments.delta"],
    "ArgumentsDoneEvent": ["response.function_call_arguments.done"],
    "ResponseErrorEvent": ["error"],
}


def _responses_stream() -> Schema:
    """One event of a Responses stream: its name is the ``type`` of its data."""
    return {
        "anyOf": [
            {
                "type": "object",
                "required": ["event", "data"],
                "properties": {"event": {"enum": events}, "data": _sse_data(_ref(model))},
            }
            for model, events in _RESPONSES_EVENTS.items()
        ]
    }


_RESPONSE_ID = {
    "name": "response_id",
    "in": "path",
    "required": True,
    "description": "The id of a response stored with store: true (resp_...).",
    "schema": {"type": "string"},
}

_REASONS = {
    200: "The answer",
    400: "The request is invalid (bad JSON, a missing or wrong field, a prompt too long)",
    401: "No API key, or a wrong one (only when the gateway has api_keys)",
    404: "No model or alias by that name",
    413: "The body is over the gateway's request_body_limit_mb",
    422: "The model fits on no node, or its source cannot be served as configured",
    429: "The model's queue is full; retry after Retry-After",
    500: "A bug in the gateway; the log has the details",
    502: "A node failed or answered something the gateway could not read",
    503: "Nothing can serve the model now (nodes down, the model recovering, shutting "
    "down); retry after Retry-After",
    507: "The model does not fit the memory left on any node",
    529: "The model's queue is full (Anthropic's overloaded_error); retry after Retry-After",
}

# What the routes that a neuron answers (``dispatch``) may answer besides 200.
_DISPATCH_ERRORS = (400, 401, 404, 413, 422, 429, 500, 502, 503, 507)


def _errors(statuses: tuple[int, ...], dialect: Dialect = "openai") -> dict[str, Schema]:
    envelope = _ref("ErrorEvent" if dialect == "anthropic" else "ErrorResponse")
    if dialect == "anthropic":  # Anthropic says 529 where OpenAI says 429
        statuses = tuple(529 if status == 429 else status for status in statuses)
    return {str(s): {"description": _REASONS[s], **_json(envelope)} for s in statuses}


def _answer(schema: Schema, stream: Schema | None = None) -> dict[str, Schema]:
    content = {"application/json": {"schema": schema}}
    if stream is not None:  # with "stream": true
        content["text/event-stream"] = {"schema": stream}
    return {"200": {"description": _REASONS[200], "content": content}}


def _body(model: str) -> Schema:
    return {"required": True, **_json(_ref(model))}


def _operation(
    summary: str,
    responses: dict[str, Schema],
    *,
    body: str | None = None,
    tag: str,
    public: bool = False,
    **extra: Any,
) -> Schema:
    operation: Schema = {"summary": summary, "tags": [tag], "responses": responses, **extra}
    if body is not None:
        operation["requestBody"] = _body(body)
    if public:
        operation["security"] = []
    return operation


def _paths() -> Schema:
    return {
        "/v1/chat/completions": {
            "post": _operation(
                "Chat completion; with stream, its chunks as server-sent events",
                _answer(_ref("ChatCompletion"), _openai_stream("ChatCompletionChunk"))
                | _errors(_DISPATCH_ERRORS),
                body="ChatCompletionRequest",
                tag="openai",
                operationId="createChatCompletion",
            )
        },
        "/v1/completions": {
            "post": _operation(
                "Text completion of a raw prompt (no chat template)",
                _answer(_ref("Completion"), _openai_stream("Completion"))
                | _errors(_DISPATCH_ERRORS),
                body="CompletionRequest",
                tag="openai",
                operationId="createCompletion",
            )
        },
        "/v1/embeddings": {
            "post": _operation(
                "Embeddings of texts or token ids",
                _answer(_ref("EmbeddingList")) | _errors(_DISPATCH_ERRORS),
                body="EmbeddingRequest",
                tag="openai",
                operationId="createEmbedding",
            )
        },
        "/v1/messages": {
            "post": _operation(
                "Anthropic Messages; with stream, its events as server-sent events",
                _answer(_ref("Message"), _anthropic_stream())
                | _errors(_DISPATCH_ERRORS, "anthropic"),
                body="MessagesRequest",
                tag="anthropic",
                operationId="createMessage",
            )
        },
        "/v1/messages/count_tokens": {
            "post": _operation(
                "The prompt's exact token count, by the model's own template and tokenizer",
                _answer(_ref("TokenCount")) | _errors(_DISPATCH_ERRORS, "anthropic"),
                body="CountTokensRequest",
                tag="anthropic",
                operationId="countTokens",
            )
        },
        "/v1/responses": {
            "post": _operation(
                "OpenAI Responses; with stream, its typed events as server-sent events",
                _answer(_ref("Response"), _responses_stream()) | _errors(_DISPATCH_ERRORS),
                body="ResponsesRequest",
                tag="openai",
                operationId="createResponse",
            )
        },
        "/v1/responses/{response_id}": {
            "get": _operation(
                "A stored response",
                _answer(_ref("Response")) | _errors((401, 404)),
                tag="openai",
                operationId="getResponse",
                parameters=[_RESPONSE_ID],
            ),
            "delete": _operation(
                "Delete a stored response",
                _answer(_ref("Deleted")) | _errors((401, 404)),
                tag="openai",
                operationId="deleteResponse",
                parameters=[_RESPONSE_ID],
            ),
        },
        "/v1/responses/{response_id}/input_items": {
            "get": _operation(
                "The input items a stored response answered, its predecessors' included",
                _answer(_ref("InputItemList")) | _errors((401, 404)),
                tag="openai",
                operationId="listInputItems",
                parameters=[_RESPONSE_ID],
            )
        },
        "/v1/models": {
            "get": _operation(
                "The catalogue; in Anthropic's shape when anthropic-version is sent",
                _answer({"anyOf": [_ref("ModelListing"), _ref("ModelPage")]}) | _errors((401,)),
                tag="openai",
                operationId="listModels",
                parameters=[
                    {
                        "name": "anthropic-version",
                        "in": "header",
                        "required": False,
                        "description": "Any value asks for Anthropic's shape.",
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/health": {
            "get": _operation(
                "Liveness",
                _answer(_ref("GatewayHealth")),
                tag="operations",
                public=True,
                operationId="health",
            )
        },
        "/ready": {
            "get": _operation(
                "Readiness: 200 once some node has a model ready, else 503",
                _answer(_ref("Ready"))
                | {"503": {"description": "Not ready yet", **_json(_ref("NotReady"))}},
                tag="operations",
                public=True,
                operationId="ready",
            )
        },
        "/fleet": {
            "get": _operation(
                "Nodes, their devices and models, the catalogue and eviction state",
                _answer(_ref("FleetView")) | _errors((401,)),
                tag="fleet",
                operationId="fleetView",
            )
        },
        "/fleet/load": {
            "post": _operation(
                "Load a model now, on the named node or where the scheduler places it",
                _answer(_ref("LoadAnswer"))
                | _errors((400, 401, 404, 422, 429, 500, 502, 503, 507)),
                body="FleetRequest",
                tag="fleet",
                operationId="fleetLoad",
            )
        },
        "/fleet/unload": {
            "post": _operation(
                "Unload a model from the named node, or from every node holding it",
                _answer(_ref("UnloadAnswer")) | _errors((400, 401, 404, 500, 502, 503)),
                body="FleetRequest",
                tag="fleet",
                operationId="fleetUnload",
            )
        },
        "/fleet/defrag": {
            "post": _operation(
                "Re-pack idle models now, so one device's memory is free in one piece",
                _answer(_ref("DefragAnswer")) | _errors((401, 500, 502, 503)),
                tag="fleet",
                operationId="fleetDefrag",
            )
        },
        **_admin_paths(),
    }


def _admin_paths() -> Schema:
    """Virtual keys and usage (docs/keys.md), behind the admin token."""
    key_id = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
    created = {"201": {"description": "The new key, shown this once", **_json(_ref("KeyCreated"))}}
    query = [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in (
            ("key", {"type": "string"}),
            ("since", {"type": "string", "description": "YYYY-MM-DD or RFC 3339, UTC"}),
            ("model", {"type": "string"}),
            ("by", {"type": "string", "enum": ["day"]}),
        )
    ]
    return {
        "/admin/keys": {
            "post": _operation("Create a virtual key", created | _errors((400, 401)),
                               body="KeyCreate", tag="admin", operationId="createKey"),
            "get": _operation("Every key (never its secret)", _answer(_ref("KeyList"))
                              | _errors((401,)), tag="admin", operationId="listKeys"),
        },
        "/admin/keys/{key_id}": {
            "parameters": [key_id],
            "get": _operation("One key", _answer(_ref("KeyView")) | _errors((401, 404)),
                              tag="admin", operationId="showKey"),
            "patch": _operation("Change a key's name or limits (null clears a limit)",
                                _answer(_ref("KeyView")) | _errors((400, 401, 404)),
                                body="KeyUpdate", tag="admin", operationId="updateKey"),
            "delete": _operation("Revoke a key", _answer(_ref("KeyView")) | _errors((401, 404)),
                                 tag="admin", operationId="revokeKey"),
        },
        "/admin/usage": {
            "get": _operation("Usage per key and model (and day)", _answer(_ref("UsageReport"))
                              | _errors((400, 401)), tag="admin", operationId="usage",
                              parameters=query),
        },
    }  # fmt: skip


def _components() -> Schema:
    _, generated = models_json_schema(
        _MODELS, ref_template=_REF, schema_generator=_Generator, title="cortex"
    )
    return _renamed(generated["$defs"])


def _renamed(value: Any) -> Any:
    """``value`` with the names in ``_RENAMED`` replaced, as keys and in references."""
    if isinstance(value, list):
        return [_renamed(item) for item in value]
    if not isinstance(value, dict):
        return value
    renamed = {}
    for key, item in value.items():
        if key == "$ref" and isinstance(item, str):
            name = item.removeprefix(_REF.format(model=""))
            renamed[key] = _REF.format(model=_RENAMED.get(name, name))
        else:
            renamed[_RENAMED.get(key, key)] = _renamed(item)
    return renamed


@cache
def openapi_document() -> Schema:
    """The document; built on first use (a few milliseconds) and kept: it depends on
    the code only, never on the configuration or the fleet."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cortex gateway",
            "version": __version__,
            "description": "One OpenAI and Anthropic compatible API over a fleet of "
            "local LLM hosts. Errors come in the envelope of the route's dialect; "
            "API keys are needed only when the gateway is configured with api_keys.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "tags": [
            {"name": "openai", "description": "OpenAI's API; errors in its envelope"},
            {"name": "anthropic", "description": "Anthropic's Messages API and envelope"},
            {"name": "fleet", "description": "Fleet administration"},
            {"name": "admin", "description": "Virtual keys and usage (the admin token)"},
            {"name": "operations", "description": "Probes, answered without a key"},
        ],
        "paths": _paths(),
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        # either one, on every route but the probes (OpenAI's SDKs send a Bearer token,
        # Anthropic's x-api-key)
        "security": [{"bearer": []}, {"apiKey": []}],
    }


@cache
def openapi_json() -> bytes:
    """The document as ``/openapi.json`` serves it."""
    return json.dumps(openapi_document(), separators=(",", ":")).encode()
