"""From an OpenAI chat request to the prompt text a model sees, tools included.

When the model's own template knows tools, it renders them. When it does not
(the bundled SmolLM2, many small models), cortex documents its own default:
the tools go into the system message as JSON with an instruction to answer
with Hermes-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
earlier tool calls are written back in that markup, and tool results become
user turns wrapped in ``<tool_response>``. The output parser reads the same
markup, so a round trip works on any model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cortex.errors import InvalidRequest
from cortex.neuron.engines.base import EngineInfo
from cortex.neuron.prompt.template import render_chat
from cortex.neuron.prompt.toolcalls import ToolFormat, detect_format
from cortex.protocol import openai as oa

DEFAULT_TOOL_PROMPT = (
    "You can call tools. To call one, answer with exactly this and nothing else:\n"
    "<tool_call>\n"
    '{{"name": "<tool name>", "arguments": {{<arguments as a JSON object>}}}}\n'
    "</tool_call>\n"
    "Available tools (JSON schema of each tool's arguments):\n{tools}"
)


@dataclass(frozen=True)
class ToolPlan:
    """How this request uses tools: which are offered, in what format, and whether forced."""

    tools: list[dict[str, Any]]  # OpenAI function definitions offered to the model
    fmt: ToolFormat
    forced: list[dict[str, Any]]  # non-empty when the output must be a call to one of these
    parallel: bool = True

    @property
    def active(self) -> bool:
        return bool(self.tools)


def plan_tools(request: oa.ChatCompletionRequest, template: str | None) -> ToolPlan:
    functions = [tool.function.model_dump(exclude_none=True) for tool in request.tools or []]
    fmt = detect_format(template) if _template_knows_tools(template) else "hermes"
    choice = request.tool_choice
    parallel = request.parallel_tool_calls is not False
    if not functions:
        if choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs 'tools'.", param="tool_choice")
        return ToolPlan([], fmt, [], parallel)
    if choice in (None, "auto"):
        return ToolPlan(functions, fmt, [], parallel)
    if choice == "none":
        return ToolPlan([], fmt, [], parallel)
    if choice == "required":
        return ToolPlan(functions, fmt, functions, parallel)
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        named = [f for f in functions if f["name"] == name]
        if not named:
            raise InvalidRequest(
                f"tool_choice names '{name}', which is not among the tools.", param="tool_choice"
            )
        return ToolPlan(functions, fmt, named, parallel)
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', ...}.",
        param="tool_choice",
    )


def _template_knows_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template  # type: ignore[operator]


def _arguments(call: oa.ToolCall) -> Any:
    try:
        return json.loads(call.function.arguments or "{}")
    except ValueError:
        return call.function.arguments


def template_messages(
    request: oa.ChatCompletionRequest, plan: ToolPlan, native_tools: bool
) -> list[dict[str, Any]]:
    """OpenAI messages in the shape HF chat templates expect."""
    out: list[dict[str, Any]] = []
    for message in request.messages:
        if isinstance(message.content, list):
            kinds = {part.get("type") for part in message.content} - {"text"}
            if kinds:
                raise InvalidRequest(
                    f"This model reads text only; content parts of type {sorted(kinds)} "
                    "(image input) are not supported.",
                    param="messages",
                )
        role = "system" if message.role == "developer" else message.role
        entry: dict[str, Any] = {"role": role, "content": message.text()}
        if native_tools:
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": _arguments(call)},
                    }
                    for call in message.tool_calls
                ]
            if message.tool_call_id:
                entry["tool_call_id"] = message.tool_call_id
            if message.name:
                entry["name"] = message.name
        else:
            if message.tool_calls:
                calls = "\n".join(
                    "<tool_call>\n"
                    + json.dumps({"name": c.function.name, "arguments": _arguments(c)})
                    + "\n</tool_call>"
                    for c in message.tool_calls
                )
                entry["content"] = (entry["content"] + "\n" + calls).strip()
            if role == "tool":
                entry = {
                    "role": "user",
                    "content": f"<tool_response>\n{entry['content']}\n</tool_response>",
                }
        out.append(entry)
    if plan.active and not native_tools:
        listing = "\n".join(json.dumps(tool) for tool in plan.tools)
        instruction = DEFAULT_TOOL_PROMPT.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + instruction}
        else:
            out.insert(0, {"role": "system", "content": instruction})
    return out


def render_prompt(info: EngineInfo, request: oa.ChatCompletionRequest, plan: ToolPlan) -> str:
    native = _template_knows_tools(info.chat_template)
    tools = [{"type": "function", "function": tool} for tool in plan.tools]
    return render_chat(
        info.chat_template,
        template_messages(request, plan, native_tools=native),
        bos_token=info.bos_token,
        eos_token=info.eos_token,
        tools=tools if native and tools else None,
    )
