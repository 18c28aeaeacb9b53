"""Tool calls out of model output text, for whole outputs and for streams.

Pure and engine-independent. Three formats (README.md, "What the API does"):

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, repeated;
- ``llama3_json``: the output is ``[<|python_tag|>]{"name": ..., "parameters": {...}}``,
  several separated by ``;`` or newlines;
- ``mistral``: ``[TOOL_CALLS][{...}, ...]`` or (tokenizer v11+) ``[TOOL_CALLS]name[ARGS]{...}``.

``parse_tool_calls`` runs the stream parser over the whole text, so streamed and
non-streamed results cannot disagree. Content is returned stripped; markup around
JSON that does not make a call is left in the content as text.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ToolFormat = Literal["hermes", "llama3_json", "mistral"]

_HERMES_OPEN = "<tool_call>"
_HERMES_CLOSE = "</tool_call>"
_MISTRAL = "[TOOL_CALLS]"
_ARGS = "[ARGS]"
_PYTHON_TAG = "<|python_tag|>"
# What may stand between [TOOL_CALLS] and [ARGS]; anything else means it is not a call.
_NAME = re.compile(r"[\w.:/-]{1,256}")
# What separates llama3 calls: dropped, never content.
_LLAMA_SEPARATORS = " \t\r\n;"


@dataclass(frozen=True)
class ParsedToolCall:
    """One complete tool call; ``arguments`` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A streamed piece of the call at ``index``: id and name once, then argument fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def detect_format(chat_template: str | None) -> ToolFormat:
    """The tool-call format a model uses, judged from its chat template (hermes by default)."""
    template = chat_template or ""
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if _PYTHON_TAG in template or "ipython" in template:
        return "llama3_json"
    return "hermes"


def parse_tool_calls(text: str, fmt: ToolFormat) -> tuple[str, list[ParsedToolCall]]:
    """(content without tool-call markup, stripped; the calls) of a whole output."""
    parser = ToolCallStreamParser(fmt)
    head, _ = parser.feed(text)
    tail, _ = parser.finish()
    return head + tail, parser.calls


class ToolCallStreamParser:
    """Splits streamed model text into content and tool-call deltas.

    Text that may still turn out to be markup is held back until it is clear. A
    call is emitted only once its JSON is complete and valid, because deltas sent
    to a client cannot be taken back if the JSON later proves malformed.
    """

    def __init__(self, fmt: ToolFormat) -> None:
        self._fmt = fmt
        self._buf = ""  # input not yet turned into content or calls
        self._step: Callable[[bool], bool] = (
            self._llama_start if fmt == "llama3_json" else self._text
        )
        self._scan: _JsonEnd | None = None
        self._from = 0  # where the current state resumes its search in _buf
        self._name = ""
        self._calls: list[ParsedToolCall] = []
        self._content: list[str] = []
        self._deltas: list[ToolCallDelta] = []
        self._started = False  # whether any non-whitespace content went out
        self._held_space = ""  # trailing whitespace, sent only if more content follows

    @property
    def calls(self) -> list[ParsedToolCall]:
        """The completed calls so far, with the same ids as the deltas."""
        return list(self._calls)

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """Next piece of output in; (content safe to show now, tool-call deltas) out."""
        self._buf += text
        while self._step(False):
            pass
        return self._drain()

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """End of output: decide everything still held and flush it."""
        while self._step(True):
            pass
        self._held_space = ""
        return self._drain()

    # Each state is a method taking ``final`` and returning whether to run the
    # (possibly new) state again; False means it needs more input.

    def _text(self, final: bool) -> bool:
        """Content, watching for the format's opening marker."""
        marker = _MISTRAL if self._fmt == "mistral" else _HERMES_OPEN
        at = self._buf.find(marker)
        if at >= 0:
            self._emit(self._buf[:at])
            self._buf = self._buf[at + len(marker) :]
            self._from = 0
            self._step = self._mistral_head if self._fmt == "mistral" else self._hermes_call
            return True
        keep = 0 if final else _partial_suffix(self._buf, marker)
        self._emit(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]
        return False

    def _hermes_call(self, final: bool) -> bool:
        at = self._buf.find(_HERMES_CLOSE, self._from)
        if at < 0 and not final:
            self._from = max(0, len(self._buf) - len(_HERMES_CLOSE) + 1)
            return False
        # An unterminated <tool_call> at the end still counts if its JSON is whole.
        call = _load_call(self._buf if at < 0 else self._buf[:at])
        if call is None:
            return self._reject(_HERMES_OPEN)
        self._buf = "" if at < 0 else self._buf[at + len(_HERMES_CLOSE) :]
        return self._accept([call])

    def _mistral_head(self, final: bool) -> bool:
        """Just after [TOOL_CALLS]: a JSON array (old), or ``name[ARGS]`` (v11)."""
        body = self._buf.lstrip()
        if not body:
            return self._reject(_MISTRAL) if final else False
        start = len(self._buf) - len(body)
        if body[0] in "[{":
            self._scan = _JsonEnd(start)
            self._step = self._mistral_array
        else:
            self._from = start
            self._step = self._mistral_name
        return True

    def _mistral_array(self, final: bool) -> bool:
        assert self._scan is not None
        end = self._scan.end(self._buf)
        if end is None:
            return self._reject(_MISTRAL) if final else False
        items = _load_json(self._buf[:end])
        if isinstance(items, dict):  # a lone object without the list around it
            items = [items]
        calls = [_to_call(item) for item in items] if isinstance(items, list) else []
        valid = [call for call in calls if call is not None]
        if not valid or len(valid) != len(calls):
            return self._reject(_MISTRAL)
        self._buf = self._buf[end:]
        return self._accept(valid)

    def _mistral_name(self, final: bool) -> bool:
        buf, start = self._buf, self._from
        at = buf.find(_ARGS, start)
        if at >= 0:
            if not _NAME.fullmatch(buf, start, at):
                return self._reject(_MISTRAL)
            self._name = buf[start:at]
            self._from = at + len(_ARGS)
            self._step = self._mistral_args
            return True
        # Give up as soon as the text cannot be a name followed by [ARGS].
        bracket = buf.find("[", start)
        name = buf[start:] if bracket < 0 else buf[start:bracket]
        tail = "" if bracket < 0 else buf[bracket:]
        if final or not _ARGS.startswith(tail) or (name and not _NAME.fullmatch(name)):
            return self._reject(_MISTRAL)
        return False

    def _mistral_args(self, final: bool) -> bool:
        if self._scan is None:
            body = self._buf[self._from :].lstrip()
            if not body:
                return self._reject(_MISTRAL) if final else False
            if body[0] != "{":
                return self._reject(_MISTRAL)
            self._scan = _JsonEnd(len(self._buf) - len(body))
        end = self._scan.end(self._buf)
        if end is None:
            return self._reject(_MISTRAL) if final else False
        call = _to_call({"name": self._name, "arguments": _load_json(self._buf[self._from : end])})
        if call is None:
            return self._reject(_MISTRAL)
        self._buf = self._buf[end:]
        return self._accept([call])

    def _llama_start(self, final: bool) -> bool:
        """Before anything but whitespace: only an output starting with ``{`` holds calls."""
        body = self._buf.lstrip()
        if body.startswith(_PYTHON_TAG):
            body = body[len(_PYTHON_TAG) :].lstrip()
        elif _PYTHON_TAG.startswith(body) and not final:
            return False  # nothing yet, or part of the tag
        if not body:
            if final:
                self._step = self._plain
            return final
        if body[0] == "{":
            self._scan = _JsonEnd(len(self._buf) - len(body))
            self._step = self._llama_object
        else:
            self._step = self._plain
        return True

    def _llama_object(self, final: bool) -> bool:
        assert self._scan is not None
        end = self._scan.end(self._buf)
        if end is None:
            if final:
                self._step = self._plain
            return final
        # Unmarked JSON needs "arguments"/"parameters" to be a call: a JSON answer
        # that merely has a "name" key stays content.
        call = _load_call(self._buf[self._scan.start : end], need_args=True)
        if call is None:
            self._step = self._plain  # from the leading whitespace or tag on: all content
            return True
        self._buf = self._buf[end:]
        self._add([call])
        self._step = self._llama_separator
        return True

    def _llama_separator(self, final: bool) -> bool:
        self._buf = self._buf.lstrip(_LLAMA_SEPARATORS)
        if not self._buf:
            return False
        if self._buf[0] == "{":
            self._scan = _JsonEnd(0)
            self._step = self._llama_object
        else:
            self._step = self._plain  # text after the calls is content
        return True

    def _plain(self, final: bool) -> bool:
        self._emit(self._buf)
        self._buf = ""
        return False

    def _accept(self, calls: list[ParsedToolCall]) -> bool:
        self._add(calls)
        self._scan = None
        self._step = self._text
        return True

    def _reject(self, marker: str) -> bool:
        """The marker did not open a call: it is content, and what followed is rescanned."""
        self._emit(marker)
        self._scan = None
        self._step = self._text
        return True

    def _add(self, calls: list[ParsedToolCall]) -> None:
        for call in calls:
            index = len(self._calls)
            self._calls.append(call)
            self._deltas.append(ToolCallDelta(index, id=call.id, name=call.name))
            self._deltas.append(ToolCallDelta(index, arguments=call.arguments))

    def _emit(self, text: str) -> None:
        """Queue content so that the whole stream comes out stripped, as a whole parse does."""
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        body = text.rstrip()
        if body:
            self._content.append(self._held_space + body)
            self._held_space = text[len(body) :]
        else:
            self._held_space += text

    def _drain(self) -> tuple[str, list[ToolCallDelta]]:
        content, deltas = "".join(self._content), self._deltas
        self._content, self._deltas = [], []
        return content, deltas


class _JsonEnd:
    """Finds where the JSON object or array opening at ``start`` closes.

    Remembers its position so a growing buffer is scanned once, not once per piece.
    """

    _TOKENS = re.compile(r'\\.?|["{}\[\]]', re.S)

    def __init__(self, start: int) -> None:
        self.start = start
        self._pos = start
        self._depth = 0
        self._in_string = False

    def end(self, text: str) -> int | None:
        """Index just past the closing bracket, or None while it has not arrived."""
        for match in self._TOKENS.finditer(text, self._pos):
            token = match.group()
            if token == "\\":
                self._pos = match.start()  # the escaped character has not arrived yet
                return None
            if token == '"':
                self._in_string = not self._in_string
            elif self._in_string or token[0] == "\\":
                continue
            elif token in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return match.end()
        self._pos = len(text)
        return None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _load_call(text: str, need_args: bool = False) -> ParsedToolCall | None:
    return _to_call(_load_json(text), need_args)


def _to_call(obj: Any, need_args: bool = False) -> ParsedToolCall | None:
    """A call from ``{"name", "arguments"|"parameters"}``, or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    key = "arguments" if "arguments" in obj else "parameters"
    if key not in obj and need_args:
        return None
    args = obj.get(key, {})
    if isinstance(args, str):  # some models send the arguments as a JSON string
        args = _load_json(args)
    if not isinstance(args, dict):
        return None
    arguments = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
    return ParsedToolCall(id="call_" + uuid.uuid4().hex[:24], name=obj["name"], arguments=arguments)
