"""Anthropic Messages request -> OpenAI chat completion request (a JSON-ready dict).

What the model sees, turn by turn:

- ``system`` (string or blocks) and every ``role: system`` message, wherever it
  sits in ``messages``, become one leading system message, in order. Claude Code
  (2.1.154+) sends its environment and agent context as a system message after
  the first user turn; many chat templates refuse a system message
  mid-conversation, and as user text models answer *it* instead of the user
  (with Claude Code's request the bundled model ended 8 of 32 answers within
  100 tokens that way, 17 of 32 with it in the system prompt, most of those
  on topic). Claude Code repeats the message at the same place every turn, so the
  leading prompt stays the same and the prefix cache still hits. Claude Code's
  billing-header block (``x-anthropic-billing-header: cc_version=…; cch=…;``)
  changes per conversation and would defeat the prefix cache: it is left out.
- Consecutive turns of one role merge, as the Anthropic API merges them.
- A user turn's ``tool_result`` blocks become ``role: tool`` messages right
  after the assistant message that called them, in call order; the turn's
  other content follows as one user message.
- ``thinking`` / ``redacted_thinking`` blocks and blocks of unknown types are
  dropped; ``cache_control`` and unknown fields are ignored.
- Tools marked ``defer_loading`` stay out of the prompt until a ``tool_reference``
  block names them, as on Anthropic's API (Claude Code sends a
  ``DeferredToolPlaceholder`` that must never be called).
- Images and non-text documents raise ``InvalidRequest`` unless the caller says
  the model can see them (``allow_images``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from cortex.errors import InvalidRequest
from cortex.protocol import anthropic as an
from cortex.translate.ids import to_backend_tool_id

BILLING_HEADER = "x-anthropic-billing-header:"
ERROR_PREFIX = "Error: "
_JOIN = "\n\n"


def to_chat_request(
    request: an.CountTokensRequest,
    *,
    model: str | None = None,
    allow_images: bool = False,
) -> dict[str, Any]:
    """The chat completion request a neuron serves for ``request``.

    Takes a ``MessagesRequest`` or, for counting tokens, a ``CountTokensRequest``
    (no sampling fields). ``model`` replaces the client's model name.
    """
    leading, turns = _turns(request)
    messages: list[dict[str, Any]] = []
    if leading:
        messages.append({"role": "system", "content": _JOIN.join(leading)})
    call_order: dict[str, int] = {}
    for turn in turns:
        if turn.role == "assistant":
            messages.extend(_assistant_message(turn.blocks))
            call_order = {
                b.id: i for i, b in enumerate(turn.blocks) if isinstance(b, an.ToolUseBlock)
            }
        else:
            messages.extend(_user_messages(turn.blocks, call_order, request.model, allow_images))
            call_order = {}
    body: dict[str, Any] = {"model": model or request.model, "messages": messages}
    body.update(_tools(request))
    if isinstance(request, an.MessagesRequest):
        body.update(_sampling(request))
    return body


# --- turns ------------------------------------------------------------------


@dataclass
class _Turn:
    role: Literal["user", "assistant"]
    blocks: list[Any] = field(default_factory=list)


def _turns(request: an.CountTokensRequest) -> tuple[list[str], list[_Turn]]:
    """The leading system texts, and the conversation as alternating turns of blocks."""
    leading = _system_prompt(request.system)
    turns: list[_Turn] = []
    for message in request.messages:
        blocks = _blocks(message.content)
        if message.role == "system":
            text = _text_of(blocks)
            leading.extend([text] if text else [])
            continue
        role = message.role
        if turns and turns[-1].role == role:
            turns[-1].blocks.extend(blocks)
        else:
            turns.append(_Turn(role, blocks))
    return leading, turns


def _system_prompt(system: str | list[an.TextBlock] | None) -> list[str]:
    if system is None:
        return []
    texts = [system] if isinstance(system, str) else [block.text for block in system]
    kept = (_without_billing_header(text) for text in texts)
    return [text for text in kept if text]


def _without_billing_header(text: str) -> str:
    """Claude Code's per-conversation billing line, removed; everything else kept."""
    if not text.lstrip().startswith(BILLING_HEADER):
        return text
    _, _, rest = text.lstrip().partition("\n")
    return rest.strip()


def _blocks(content: str | list[Any]) -> list[Any]:
    return [an.TextBlock(text=content)] if isinstance(content, str) else list(content)


def _text_of(blocks: list[Any]) -> str:
    return _JOIN.join(b.text for b in blocks if isinstance(b, an.TextBlock) and b.text)


# --- assistant turns -----------------------------------------------------------


def _assistant_message(blocks: list[Any]) -> list[dict[str, Any]]:
    texts = [b.text for b in blocks if isinstance(b, an.TextBlock) and b.text]
    calls = [
        {
            "id": to_backend_tool_id(b.id),
            "type": "function",
            "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)},
        }
        for b in blocks
        if isinstance(b, an.ToolUseBlock)
    ]
    if not texts and not calls:  # thinking only: nothing the model should see
        return []
    message: dict[str, Any] = {"role": "assistant", "content": _JOIN.join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


# --- user turns -------------------------------------------------------------------


def _user_messages(
    blocks: list[Any], call_order: dict[str, int], model: str, allow_images: bool
) -> list[dict[str, Any]]:
    """Tool results first (in the order they were called), then the rest of the turn."""
    results = [b for b in blocks if isinstance(b, an.ToolResultBlock)]
    results.sort(key=lambda b: call_order.get(b.tool_use_id, len(call_order)))
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for result in results:
        text, media = _tool_result(result, model, allow_images)
        out.append(
            {
                "role": "tool",
                "tool_call_id": to_backend_tool_id(result.tool_use_id),
                "content": text,
            }
        )
        parts.extend(media)
    for block in blocks:
        parts.extend(_user_parts(block, model, allow_images))
    if parts or not out:
        out.append({"role": "user", "content": _content(parts)})
    return out


def _user_parts(block: Any, model: str, allow_images: bool) -> list[dict[str, Any]]:
    if isinstance(block, an.TextBlock):
        return [{"type": "text", "text": block.text}] if block.text else []
    if isinstance(block, an.ImageBlock | an.DocumentBlock):
        return [_media_part(block, model, allow_images)]
    return []  # tool results are handled apart; thinking and unknown blocks are dropped


def _tool_result(
    result: an.ToolResultBlock, model: str, allow_images: bool
) -> tuple[str, list[dict[str, Any]]]:
    """The tool message's text, and any images it returned (for a following user message)."""
    content = result.content
    if content is None:
        text, media = "", []
    elif isinstance(content, str):
        text, media = content, []
    else:
        parts = [p for block in content for p in _user_parts(block, model, allow_images)]
        text = _JOIN.join(p["text"] for p in parts if p["type"] == "text")
        media = [p for p in parts if p["type"] != "text"]
    if result.is_error and not text.lstrip().lower().startswith("error"):
        text = ERROR_PREFIX + text
    return text, media


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A plain string when the turn is all text (templates read strings best)."""
    if all(part["type"] == "text" for part in parts):
        return _JOIN.join(part["text"] for part in parts)
    return parts


def _media_part(
    block: an.ImageBlock | an.DocumentBlock, model: str, allow_images: bool
) -> dict[str, Any]:
    source = block.source
    kind = source.get("type")
    if isinstance(block, an.DocumentBlock) and kind in ("text", "content"):
        return {"type": "text", "text": _document_text(block)}
    what = "images" if isinstance(block, an.ImageBlock) else "documents other than plain text"
    if not allow_images:
        raise InvalidRequest(
            f"The model '{model}' cannot see {what}; remove the {block.type} blocks "
            "or choose a model that accepts images.",
            param="messages",
            code="images_not_supported",
        )
    if kind == "url" and isinstance(block, an.ImageBlock):
        return {"type": "image_url", "image_url": {"url": source.get("url", "")}}
    if kind != "base64":
        raise InvalidRequest(
            f"{block.type} sources of type '{kind}' are not supported; send the data as base64.",
            param="messages",
        )
    media_type = source.get("media_type") or "application/octet-stream"
    data_url = f"data:{media_type};base64,{source.get('data', '')}"
    if media_type.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": data_url}}
    # A PDF: OpenAI's file part, for backends that read documents.
    return {
        "type": "file",
        "file": {"filename": getattr(block, "title", None) or "document", "file_data": data_url},
    }


def _document_text(block: an.DocumentBlock) -> str:
    source = block.source
    data = source.get("data") if source.get("type") == "text" else source.get("content")
    if isinstance(data, list):
        data = _JOIN.join(str(part.get("text", "")) for part in data if isinstance(part, dict))
    text = str(data or "")
    return f"{block.title}{_JOIN}{text}" if block.title else text


# --- tools and sampling --------------------------------------------------------


def _tools(request: an.CountTokensRequest) -> dict[str, Any]:
    tools = []
    referenced = _referenced_tools(request.messages)
    for tool in request.tools or []:
        if tool.input_schema is None and tool.type not in (None, "custom"):
            continue  # a server tool (web search, code execution): nothing here can run it
        if (tool.model_extra or {}).get("defer_loading") is True and tool.name not in referenced:
            continue  # not loaded into the model's context until a search names it
        function: dict[str, Any] = {
            "name": tool.name,
            "parameters": tool.input_schema or {"type": "object", "properties": {}},
        }
        if tool.description:
            function["description"] = tool.description
        if tool.strict is not None:
            function["strict"] = tool.strict
        tools.append({"type": "function", "function": function})
    if not tools:
        return {}
    out: dict[str, Any] = {"tools": tools}
    choice = request.tool_choice
    if choice is None:
        return out
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest(
                "tool_choice of type 'tool' needs a 'name'.", param="tool_choice.name"
            )
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def _referenced_tools(messages: list[an.MessageParam]) -> set[str]:
    """Names in ``tool_reference`` blocks (tool search results): deferred tools now loaded."""
    names: set[str] = set()
    for message in messages:
        for block in _blocks(message.content):
            inner = block.content if isinstance(block, an.ToolResultBlock) else [block]
            for part in inner if isinstance(inner, list) else []:
                if isinstance(part, an.OtherBlock) and part.type == "tool_reference":
                    name = (part.model_extra or {}).get("tool_name")
                    names.update([name] if isinstance(name, str) else [])
    return names


def _sampling(request: an.MessagesRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "stop": [s for s in request.stop_sequences or [] if s] or None,
    }
    if request.stream:
        fields["stream"] = True
        fields["stream_options"] = {"include_usage": True}
    return {key: value for key, value in fields.items() if value is not None}
