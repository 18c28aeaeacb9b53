"""OpenAI Responses API wire types: ``POST /v1/responses`` requests, the ``response``
object, its output items, and its stream events.

Requests tolerate unknown fields and unknown item and tool types (OpenAI adds new ones
often; Codex sends ``namespace`` tools, ``web_search``, ``client_metadata``); the
translator decides what to do with what it does not know. The answer carries the fields
the official SDK and Codex read, in OpenAI's names (docs/responses.md).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- input items ------------------------------------------------------------


class ContentPart(_Tolerant):
    """``input_text``, ``output_text`` (earlier answers sent back), ``refusal``, or a kind
    a text-only model refuses (``input_image``, ``input_file``)."""

    type: str
    text: str | None = None
    refusal: str | None = None


class MessageItem(_Tolerant):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None


class FunctionCallItem(_Tolerant):
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str = ""
    id: str | None = None
    namespace: str | None = None  # the namespace tool the function belongs to


class FunctionCallOutputItem(_Tolerant):
    type: Literal["function_call_output"] = "function_call_output"
    call_id: str
    # a string, or content parts (``input_text``; images a text model cannot see)
    output: str | list[ContentPart]
    id: str | None = None


class ReasoningItem(_Tolerant):
    """An earlier turn's reasoning: ``summary`` and ``content`` parts, or only an
    ``encrypted_content`` blob another server minted."""

    type: Literal["reasoning"] = "reasoning"
    summary: list[ContentPart] = Field(default_factory=list)
    content: list[ContentPart] | None = None
    id: str | None = None


class OtherItem(_Tolerant):
    """An item type the gateway does not run (``web_search_call``, ``item_reference``...)."""

    type: str


_KNOWN_ITEMS = {"message", "function_call", "function_call_output", "reasoning"}


def _item_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind is None:  # the easy form: {"role": "user", "content": "..."}
        return "message"
    return kind if isinstance(kind, str) and kind in _KNOWN_ITEMS else "other"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_tag),
]


# --- tools ------------------------------------------------------------------


class Tool(_Tolerant):
    """``function`` (flat: name, description, parameters, strict at the top), ``namespace``
    (a named group of functions in ``tools``), or a hosted tool (``web_search``...)."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: list[Tool] | None = None  # a namespace's functions


class TextFormat(_Tolerant):
    """``text``, ``json_object``, or ``json_schema`` (name, schema, strict at the top)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Tolerant):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(_Tolerant):
    effort: str | None = None
    summary: str | None = None


# --- requests ---------------------------------------------------------------


class ResponsesRequest(_Tolerant):
    """``POST /v1/responses``."""

    model: str
    input: str | list[InputItem] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # strict: "12" is refused as OpenAI refuses it, not quietly read as 12
    max_output_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool = False
    store: bool = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None  # echoed; nothing is cut here


# --- the response object ----------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus
    namespace: str | None = None  # the namespace tool the function came from


class OutputReasoning(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText]
    status: ItemStatus


OutputItem = Annotated[
    OutputMessage | OutputFunctionCall | OutputReasoning, Field(discriminator="type")
]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # the neuron's prefix cache needs no paid write


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


Status = Literal["completed", "incomplete", "failed", "in_progress"]


class Response(BaseModel):
    """The ``response`` object: answered whole, carried by the stream's lifecycle
    events, kept by the store. Besides the answer it echoes the request's settings."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["auto", "disabled"] = "disabled"
    metadata: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    background: bool = False
    service_tier: str = "default"


class Deleted(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: Literal[True] = True


class InputItemList(BaseModel):
    """``GET /v1/responses/{id}/input_items``: every item the response was answered from."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool = False


# --- stream events ----------------------------------------------------------
# Every event carries ``type`` (also its SSE ``event:`` name) and ``sequence_number``,
# counting from 0 within one stream.


class _Event(BaseModel):
    sequence_number: int = 0


class LifecycleEvent(_Event):
    """``response.created``, ``.in_progress``, ``.completed``, ``.incomplete``, ``.failed``."""

    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    response: Response


class OutputItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class TextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(_Event):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ReasoningDeltaEvent(_Event):
    type: Literal["response.reasoning_text.delta"] = "response.reasoning_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningDoneEvent(_Event):
    type: Literal["response.reasoning_text.done"] = "response.reasoning_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str


class ArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(_Event):
    """The last event of a stream that failed, after ``response.failed``."""

    type: Literal["error"] = "error"
    code: str | None
    message: str
    param: str | None


StreamEvent = (
    LifecycleEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | ReasoningDeltaEvent
    | ReasoningDoneEvent
    | ArgumentsDeltaEvent
    | ArgumentsDoneEvent
    | ErrorEvent
)


# --- ids --------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """``resp_…``, ``msg_…``, ``fc_…``, ``rs_…``: OpenAI's prefixes, random hex."""
    return f"{prefix}_{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
