"""OpenAI Responses request -> chat completion request, and chat completion -> ``response``.

What the model sees:

- ``instructions`` and every ``system`` or ``developer`` message, wherever it sits,
  become one leading system message, in order (Codex sends two developer messages
  first; chat templates refuse a system message mid-conversation, as for Anthropic's
  ``system`` in requests.py).
- ``user`` and ``assistant`` messages keep their text (``input_text``,
  ``output_text``, ``refusal`` parts); images and files are a 400, as on every text
  model here.
- ``function_call`` items join the assistant message before them as ``tool_calls``
  (``call_id`` is the id); ``function_call_output`` items are ``role: tool`` messages.
- ``reasoning`` items are dropped: the neuron's chat templates take no earlier
  reasoning. Item types the gateway does not know are dropped too.
- ``function`` tools, and the functions of ``namespace`` tools, are chat tools; hosted
  tools (``web_search``, ``file_search``, ``mcp``...) are left out with one log line.

The answer: ``finished`` decides an answer's status, items and usage for both the whole
answer (``to_response``) and the stream (``openai_responses_stream``), so a stream
folds to the same ``response`` the same completion gives unstreamed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter

from cortex.errors import InvalidRequest, UpstreamError
from cortex.protocol import openai_responses as rs
from cortex.translate.responses import reasoning_of
from cortex.translate.thinking import ThinkSplitter

log = logging.getLogger("cortex.translate.responses")

_JOIN = "\n\n"
_TEXT_PARTS = {"input_text", "output_text", "text", "summary_text", "reasoning_text"}
_ITEMS = TypeAdapter(list[rs.InputItem])


# --- request -----------------------------------------------------------------


def input_items(request: rs.ResponsesRequest) -> list[dict[str, Any]]:
    """The request's ``input`` as item dicts, the form they are stored in."""
    if isinstance(request.input, str):
        return [{"type": "message", "role": "user", "content": request.input}]
    return [
        item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in request.input
    ]


def to_chat_request(
    request: rs.ResponsesRequest, items: Sequence[Mapping[str, Any]], *, model: str
) -> dict[str, Any]:
    """The chat completion request a neuron serves for ``request``, whose whole
    conversation (earlier turns of ``previous_response_id`` first) is ``items``."""
    leading = [request.instructions] if request.instructions else []
    messages: list[dict[str, Any]] = []
    for item in _ITEMS.validate_python(list(items)):
        if isinstance(item, rs.MessageItem):
            _message(item, leading, messages, request.model)
        elif isinstance(item, rs.FunctionCallItem):
            _function_call(item, messages)
        elif isinstance(item, rs.FunctionCallOutputItem):
            text = _text(item.output, request.model, "function_call_output")
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": text})
        # reasoning and unknown items: nothing the model here reads
    if leading:
        messages.insert(0, {"role": "system", "content": _JOIN.join(leading)})
    if not messages:
        raise InvalidRequest("'input' is empty: there is nothing to answer.", param="input")
    body: dict[str, Any] = {"model": model, "messages": messages}
    body.update(_tools(request))
    body.update(_sampling(request))
    return body


def _message(
    item: rs.MessageItem, leading: list[str], messages: list[dict[str, Any]], model: str
) -> None:
    text = _text(item.content, model, "input")
    if item.role in ("system", "developer"):
        leading.extend([text] if text else [])
        return
    messages.append({"role": item.role, "content": text})


def _function_call(item: rs.FunctionCallItem, messages: list[dict[str, Any]]) -> None:
    call = {
        "id": item.call_id,
        "type": "function",
        "function": {"name": item.name, "arguments": item.arguments or "{}"},
    }
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":  # the text that led to the call
        last.setdefault("tool_calls", []).append(call)
        last["content"] = last["content"] or None
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _text(content: str | list[rs.ContentPart], model: str, param: str) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content:
        if part.type in _TEXT_PARTS:
            texts.append(part.text or "")
        elif part.type == "refusal":
            texts.append(part.refusal or "")
        else:
            raise InvalidRequest(
                f"The model '{model}' reads text only; remove the {part.type} parts.",
                param=param,
                code="images_not_supported" if "image" in part.type else None,
            )
    return _JOIN.join(text for text in texts if text)


# Hosted tools: OpenAI runs them on its side; nothing here can.
def _functions(tools: Sequence[rs.Tool]) -> tuple[list[rs.Tool], list[str]]:
    """The function tools, namespaces flattened, and the types of those left out."""
    functions: list[rs.Tool] = []
    skipped: list[str] = []
    for tool in tools:
        if tool.type == "function" and tool.name:
            functions.append(tool)
        elif tool.type == "namespace":
            inner, left_out = _functions(tool.tools or [])
            functions += inner
            skipped += left_out
        else:
            skipped.append(tool.type)
    return functions, skipped


def namespaces(tools: Sequence[rs.Tool] | None) -> dict[str, str]:
    """Function name -> the namespace tool it came from, to name it on its calls."""
    return {
        inner.name: tool.name
        for tool in tools or []
        if tool.type == "namespace" and tool.name
        for inner in tool.tools or []
        if inner.name
    }


def _tools(request: rs.ResponsesRequest) -> dict[str, Any]:
    functions, skipped = _functions(request.tools or [])
    if skipped:
        log.info("responses: left out tools the gateway cannot run: %s", ", ".join(skipped))
    if not functions:
        return {}
    tools = []
    for tool in functions:
        function: dict[str, Any] = {
            "name": tool.name,
            "parameters": tool.parameters or {"type": "object", "properties": {}},
        }
        if tool.description:
            function["description"] = tool.description
        if tool.strict is not None:
            function["strict"] = tool.strict
        tools.append({"type": "function", "function": function})
    out: dict[str, Any] = {"tools": tools}
    choice = _tool_choice(request.tool_choice, {t.name for t in functions if t.name})
    if choice is not None:
        out["tool_choice"] = choice
    if request.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = request.parallel_tool_calls
    return out


def _tool_choice(choice: str | dict[str, Any] | None, names: set[str]) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if name not in names:
            raise InvalidRequest(
                f"tool_choice names the function {name!r}, which is not among the tools.",
                param="tool_choice",
            )
        return {"type": "function", "function": {"name": name}}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        mode = choice.get("mode")
        return mode if mode in ("auto", "required") else "auto"
    if isinstance(choice, str):
        raise InvalidRequest(
            f"tool_choice must be auto, none, required or a function, not {choice!r}.",
            param="tool_choice",
        )
    return "auto"  # a hosted tool's type: that tool is left out, the model chooses


def _sampling(request: rs.ResponsesRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "response_format": _response_format(request.text),
    }
    if request.stream:
        fields["stream"] = True
        fields["stream_options"] = {"include_usage": True}
    return {key: value for key, value in fields.items() if value is not None}


def _response_format(text: rs.TextConfig | None) -> dict[str, Any] | None:
    form = text.format if text is not None else None
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return {"type": "json_object"}
    if form.schema_ is None:
        raise InvalidRequest("text.format of type json_schema needs a 'schema'.", param="text")
    schema: dict[str, Any] = {"name": form.name or "response", "schema": form.schema_}
    if form.strict is not None:
        schema["strict"] = form.strict
    return {"type": "json_schema", "json_schema": schema}


# --- the response object -------------------------------------------------------


def echo(
    request: rs.ResponsesRequest, *, response_id: str, created_at: int | None = None
) -> rs.Response:
    """The ``response`` before any output: ``in_progress``, with the request's settings
    as OpenAI echoes them."""
    text = (
        request.text.model_dump(mode="json", by_alias=True, exclude_none=True)
        if (request.text and request.text.format)
        else {"format": {"type": "text"}}
    )
    return rs.Response(
        id=response_id,
        created_at=created_at if created_at is not None else rs.now(),
        status="in_progress",
        model=request.model,
        instructions=request.instructions,
        tools=[t.model_dump(mode="json", exclude_none=True) for t in request.tools or []],
        tool_choice=request.tool_choice if request.tool_choice is not None else "auto",
        parallel_tool_calls=request.parallel_tool_calls is not False,
        temperature=request.temperature,
        top_p=request.top_p,
        max_output_tokens=request.max_output_tokens,
        previous_response_id=request.previous_response_id,
        reasoning=request.reasoning.model_dump(mode="json") if request.reasoning else None,
        store=request.store,
        text=text,
        metadata=request.metadata or {},
        user=request.user,
        truncation=request.truncation or "disabled",
    )


def item_id(prefix: str, response_id: str, index: int) -> str:
    """An output item's id, from its response's and its place: a stream and the same
    answer given whole name their items alike."""
    return f"{prefix}_{response_id.removeprefix('resp_')}{index:02d}"


def finished(
    base: rs.Response,
    items: list[rs.OutputItem],
    finish_reason: str | None,
    usage: Mapping[str, Any] | None,
) -> rs.Response:
    """The answer's final ``response``: ``incomplete`` after a length cut (its last
    item too), ``completed`` otherwise."""
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(
        finish_reason or ""
    )
    done: list[rs.OutputItem] = [item.model_copy(update={"status": "completed"}) for item in items]
    if reason is not None and done:
        done[-1] = done[-1].model_copy(update={"status": "incomplete"})
    return base.model_copy(
        update={
            "status": "incomplete" if reason else "completed",
            "incomplete_details": rs.IncompleteDetails(reason=reason) if reason else None,
            "output": done,
            "usage": usage_of(usage),
        }
    )


def usage_of(usage: Mapping[str, Any] | None) -> rs.ResponseUsage:
    """Chat usage as Responses reports it: input tokens include the cached ones."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    return rs.ResponseUsage(
        input_tokens=prompt,
        input_tokens_details=rs.InputTokensDetails(
            cached_tokens=int(details.get("cached_tokens") or 0)
        ),
        output_tokens=completion,
        output_tokens_details=rs.OutputTokensDetails(),
        total_tokens=prompt + completion,
    )


def to_response(
    completion: Mapping[str, Any], base: rs.Response, names: Mapping[str, str] | None = None
) -> rs.Response:
    """The final ``response`` for a non-streamed chat completion; ``names`` maps function
    names to their namespace (``namespaces``)."""
    choices = completion.get("choices") or []
    if not choices:
        raise UpstreamError("The backend answered without a choice.", code="empty_choices")
    choice = choices[0]
    message = choice.get("message") or {}
    thinking, text = reasoning_of(message), ""
    splitter = ThinkSplitter()
    for kind, piece in [*splitter.feed(message.get("content") or ""), *splitter.finish()]:
        if kind == "thinking":
            thinking += piece
        else:
            text += piece
    items: list[rs.OutputItem] = []
    if thinking:
        items.append(reasoning_item(base.id, len(items), thinking))
    calls = message.get("tool_calls") or []
    if text.strip() or (not calls and not items):  # whitespace before a call is no answer
        items.append(message_item(base.id, len(items), text))
    used: set[str] = set()
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        items.append(
            call_item(
                base.id,
                len(items),
                call_id=call_id(call.get("id"), used, base.id, index),
                name=function.get("name") or "",
                arguments=function.get("arguments") or "{}",
                namespace=(names or {}).get(function.get("name") or ""),
            )
        )
    return finished(base, items, choice.get("finish_reason"), completion.get("usage"))


def call_id(backend_id: str | None, used: set[str], response_id: str, index: int) -> str:
    """The call's id as the backend named it, unless it named none or one already taken
    in this response (clients tell calls apart by it: the SDK refuses a repeated one)."""
    chosen = backend_id if backend_id and backend_id not in used else None
    chosen = chosen or item_id("call", response_id, index)
    used.add(chosen)
    return chosen


def message_item(response_id: str, index: int, text: str) -> rs.OutputMessage:
    return rs.OutputMessage(
        id=item_id("msg", response_id, index),
        status="in_progress",
        content=[rs.OutputText(text=text)],
    )


def reasoning_item(response_id: str, index: int, thinking: str) -> rs.OutputReasoning:
    return rs.OutputReasoning(
        id=item_id("rs", response_id, index),
        status="in_progress",
        content=[rs.ReasoningText(text=thinking)],
    )


def call_item(
    response_id: str,
    index: int,
    *,
    call_id: str,
    name: str,
    arguments: str,
    namespace: str | None = None,
) -> rs.OutputFunctionCall:
    return rs.OutputFunctionCall(
        id=item_id("fc", response_id, index),
        call_id=call_id,
        name=name,
        arguments=arguments,
        namespace=namespace,
        status="in_progress",
    )
