"""Anthropic Messages wire types: requests, content blocks, responses, stream events.

Requests tolerate unknown fields and unknown content-block types (Claude Code
sends new ones every few releases: ``cache_control`` with ``scope``,
``context_management``, ``tool_reference`` blocks); the translator decides what
to do with what it does not know. Responses and stream events carry exactly the
fields the official SDK reads, and keep ``null`` where the SDK expects it
(``stop_reason`` in ``message_start``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- content blocks (requests and responses) --------------------------------


class TextBlock(_Tolerant):
    type: Literal["text"] = "text"
    text: str


class ImageBlock(_Tolerant):
    """``source`` is ``{type: base64, media_type, data}`` or ``{type: url, url}``."""

    type: Literal["image"] = "image"
    source: dict[str, Any]


class DocumentBlock(_Tolerant):
    """``source`` is base64 (PDF), ``text`` (plain text), ``content`` (blocks) or ``url``."""

    type: Literal["document"] = "document"
    source: dict[str, Any]
    title: str | None = None


class ToolUseBlock(_Tolerant):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(_Tolerant):
    type: Literal["thinking"] = "thinking"
    thinking: str
    # Required by the API; tolerated when missing because it is dropped before the model.
    signature: str = ""


class RedactedThinkingBlock(_Tolerant):
    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str


class OtherBlock(_Tolerant):
    """A block type this gateway does not know (``tool_reference``, server tool results)."""

    type: str


_KNOWN_BLOCKS = {
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
}


_RESULT_PARTS = {"text", "image", "document"}


def _block_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    # any other type, a non-string one too (which OtherBlock then refuses with a 400)
    return kind if isinstance(kind, str) and kind in _KNOWN_BLOCKS else "other"


def _result_part_tag(value: Any) -> str:
    kind = _block_tag(value)
    return kind if kind in _RESULT_PARTS else "other"


# Inside a tool_result: text and images (and, rarely, documents or newer block types).
ToolResultContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_result_part_tag),
]


class ToolResultBlock(_Tolerant):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str | list[ToolResultContentBlock] | None = None
    is_error: bool | None = None


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_tag),
]


# --- requests ---------------------------------------------------------------


class MessageParam(_Tolerant):
    # ``system`` inside ``messages``: Claude Code >= 2.1.154 (mid-conversation system).
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(_Tolerant):
    """A client tool; server tools (``web_search_*``) carry a ``type`` and no schema."""

    name: str
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoice(_Tolerant):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Tolerant):
    """``enabled`` (with ``budget_tokens``), ``adaptive`` or ``disabled``: accepted, unused."""

    type: str
    budget_tokens: int | None = None


class CountTokensRequest(_Tolerant):
    """``POST /v1/messages/count_tokens``: a Messages request without ``max_tokens``."""

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``. A missing ``max_tokens`` fails validation with that field named."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None


# --- responses --------------------------------------------------------------

StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]

# What the gateway itself produces; the SDK's ContentBlock union is wider.
ResponseBlock = Annotated[
    TextBlock | ThinkingBlock | ToolUseBlock,
    Field(discriminator="type"),
]


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ResponseBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(BaseModel):
    """The ``count_tokens`` answer."""

    input_tokens: int


class ModelInfo(BaseModel):
    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str  # RFC 3339


class ModelPage(BaseModel):
    """``GET /v1/models`` in Anthropic's shape (asked for with ``anthropic-version``)."""

    data: list[ModelInfo]
    has_more: bool = False
    first_id: str | None
    last_id: str | None


# --- stream events ----------------------------------------------------------


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ThinkingDelta(BaseModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class SignatureDelta(BaseModel):
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


BlockDelta = Annotated[
    TextDelta | InputJsonDelta | ThinkingDelta | SignatureDelta,
    Field(discriminator="type"),
]


class MessageStartEvent(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ResponseBlock


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: BlockDelta


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(BaseModel):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class MessageDeltaUsage(BaseModel):
    """Cumulative totals, as the SDK expects: they overwrite, never add."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageDeltaEvent(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(BaseModel):
    type: Literal["ping"] = "ping"


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorEvent(BaseModel):
    """An in-band failure; the same envelope as a non-streaming error body."""

    type: Literal["error"] = "error"
    error: ErrorDetail


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | PingEvent
    | ErrorEvent
)
