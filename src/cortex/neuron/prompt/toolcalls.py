"""Tool calls out of model output text, for whole outputs and for streams.

Pure and engine-independent. Three formats (README.md, "What the API does"):

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, repeated;
- ``llama3_json``: the output is ``[<|python_tag|>]{"name": ..., "parameters": {...}}``,
  several separated by ``;`` or newlines;
- ``mistral``: ``[TOOL_CALLS][{...}, ...]`` or (tokenizer v11+) ``[TOOL_CALLS]name[ARGS]{...}``.

A call streams as it is generated. Once its head is in (``{"name": "<name>",
"arguments": `` and the ``{`` that opens the arguments, or ``name[ARGS]{``), its id
and name go out, then the arguments text as it arrives, untouched, as vLLM and
llama.cpp's server send it. What may still turn out to be markup is held back, but
never far: a marker's length, a head (``HEAD_LIMIT``), the end of a call
(``_TAIL_LIMIT``). A call written some other way (keys in another order, arguments
as a JSON string) can only be judged whole; it is held until its JSON closes, at
most ``_HOLD_LIMIT`` characters, and given up as content past that.

An output that ends inside a call's arguments (``max_tokens``) keeps the call, its
arguments the JSON cut short (``ParsedToolCall.complete`` is False). One that ends
inside a head gives neither a call nor content: markup is never shown.

``parse_tool_calls`` runs the stream parser over the whole text, so streamed and
non-streamed results cannot disagree. Content is returned stripped; markup around
JSON that does not make a call is left in the content as text.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from cortex.neuron.prompt.toolcall_json import (
    HEAD_LIMIT,
    OBJECT_END,
    SPACE,
    JsonEnd,
    load_call,
    load_json,
    partial_suffix,
    read_head,
    to_call,
)

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
# After a call's arguments, how far to look for the rest of its object and </tool_call>.
_TAIL_LIMIT = 256
# A call not written head first (keys in another order, arguments as a JSON string)
# can only be judged whole, and nothing of it reaches the client until then. A model
# that opens one and rambles would hold the stream for minutes, so the wait is capped:
# past this many characters the marker and the text are released as content. 4096
# characters is about a thousand tokens, more than such calls take in practice.
_HOLD_LIMIT = 4096


@dataclass(frozen=True)
class ParsedToolCall:
    """One tool call; ``arguments`` is the JSON text of an object.

    ``complete`` is False for a call the output ended inside (``max_tokens``): its
    arguments are then the beginning of the object, as far as it was generated.
    """

    id: str
    name: str
    arguments: str
    complete: bool = True


@dataclass(frozen=True)
class ToolCallDelta:
    """A streamed piece of the call at ``index``: id and name once, then argument fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class _Call:
    id: str
    name: str
    pieces: list[str] = field(default_factory=list)  # the arguments, as they came
    complete: bool = False


def detect_format(chat_template: str | None) -> ToolFormat:
    """The tool-call format a model uses, judged from its chat template (hermes by default)."""
    template = chat_template or ""
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if _PYTHON_TAG in template or "ipython" in template:
        return "llama3_json"
    return "hermes"


def parse_tool_calls(
    text: str, fmt: ToolFormat, forced: bool = False
) -> tuple[str, list[ParsedToolCall]]:
    """(content without tool-call markup, stripped; the calls) of a whole output."""
    parser = ToolCallStreamParser(fmt, forced)
    head, _ = parser.feed(text)
    tail, _ = parser.finish()
    return head + tail, parser.calls


class ToolCallStreamParser:
    """Splits streamed model text into content and tool-call deltas.

    ``forced``: a grammar makes the whole output one call, so whatever does not make
    the call (a marker cut short by ``max_tokens``, say) is markup, never content.
    """

    def __init__(self, fmt: ToolFormat, forced: bool = False) -> None:
        self._fmt = fmt
        self._forced = forced
        self._buf = ""  # input not yet turned into content or calls
        self._step: Callable[[bool], bool] = (
            self._llama_start if fmt == "llama3_json" else self._text
        )
        self._scan: JsonEnd | None = None
        self._from = 0  # where the current state resumes its search in _buf
        self._name = ""
        self._after: Callable[[bool], bool] = self._text  # once a call's arguments close
        self._then: Callable[[bool], bool] = self._text  # once its object closes
        self._calls: list[_Call] = []
        self._content: list[str] = []
        self._deltas: list[ToolCallDelta] = []
        self._started = False  # whether any non-whitespace content went out
        self._held_space = ""  # trailing whitespace, sent only if more content follows

    @property
    def calls(self) -> list[ParsedToolCall]:
        """The calls so far, with the same ids as the deltas and their arguments joined."""
        return [ParsedToolCall(c.id, c.name, "".join(c.pieces), c.complete) for c in self._calls]

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
        self._buf = ""
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
            self._step = self._mistral_head if self._fmt == "mistral" else self._hermes_head
            return True
        keep = 0 if final else partial_suffix(self._buf, marker)
        self._emit(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]
        return False

    # --- hermes ---------------------------------------------------------------

    def _hermes_head(self, final: bool) -> bool:
        """Just after <tool_call>: the head of the call, or the sign that there is none."""
        head = read_head(self._buf, 0)
        if head.state == "call":
            self._open_call(head.name, head.args, self._hermes_tail, tags=True)
            return True
        if head.state == "maybe":
            return self._unfinished(final)
        if not self._buf.lstrip(SPACE).startswith("{"):
            return self._reject(_HERMES_OPEN)  # not JSON: the marker was text
        self._step = self._hermes_whole
        return True

    def _hermes_whole(self, final: bool) -> bool:
        """A call not written head first: the JSON up to </tool_call>, judged whole."""
        window = _HOLD_LIMIT + len(_HERMES_CLOSE)
        at = self._buf.find(_HERMES_CLOSE, self._from, window)
        if at < 0:
            if len(self._buf) >= window:
                return self._reject(_HERMES_OPEN)
            if not final:
                self._from = max(0, len(self._buf) - len(_HERMES_CLOSE) + 1)
                return False
        # An unterminated <tool_call> at the end still counts if its JSON is whole.
        call = load_call(self._buf if at < 0 else self._buf[:at])
        if call is None:
            return self._reject(_HERMES_OPEN)
        self._buf = "" if at < 0 else self._buf[at + len(_HERMES_CLOSE) :]
        self._add(*call)
        self._step = self._text
        return True

    def _hermes_tail(self, final: bool) -> bool:
        """After the arguments: the brace that closes the call object, and </tool_call>.

        What follows the brace is content again, unless it is the closing marker. Other
        keys after the arguments are dropped up to </tool_call>, looked for in the next
        ``_TAIL_LIMIT`` characters only.
        """
        end = OBJECT_END.match(self._buf)
        assert end is not None
        rest = self._buf[end.end() :]
        if rest.startswith(_HERMES_CLOSE):
            self._buf = rest[len(_HERMES_CLOSE) :]
        elif _HERMES_CLOSE.startswith(rest):
            if not final:
                return False
            self._buf = ""  # a marker cut short by the end of the output
        elif "}" not in end.group():
            window = self._buf[:_TAIL_LIMIT]
            close, opening = window.find(_HERMES_CLOSE), window.find(_HERMES_OPEN)
            if close >= 0 and (opening < 0 or close < opening):
                self._buf = self._buf[close + len(_HERMES_CLOSE) :]
            elif not (opening >= 0 or final or len(self._buf) >= _TAIL_LIMIT):
                return False
        else:
            self._buf = rest
        self._step = self._text
        return True

    # --- mistral --------------------------------------------------------------

    def _mistral_head(self, final: bool) -> bool:
        """Just after [TOOL_CALLS]: a JSON array (old), or ``name[ARGS]`` (v11)."""
        body = self._buf.lstrip(SPACE)
        start = len(self._buf) - len(body)
        if body.startswith("["):
            item = body[1:].lstrip(SPACE)
            at = len(self._buf) - len(item)
            if item.startswith("{"):
                return self._object_head(at, final, self._array_next, self._mistral_whole)
            if not item and len(self._buf) <= HEAD_LIMIT:
                return self._unfinished(final)
        elif body.startswith("{"):  # a lone object without the list around it
            return self._object_head(start, final, self._text, self._mistral_whole)
        elif body:
            self._from = start
            self._step = self._mistral_name
            return True
        elif len(self._buf) <= HEAD_LIMIT:
            return self._unfinished(final)
        else:
            return self._reject(_MISTRAL)
        self._step = self._mistral_whole
        return True

    def _mistral_whole(self, final: bool) -> bool:
        """An array (or object) of calls not written head first, judged whole."""
        if self._scan is None:
            body = self._buf.lstrip(SPACE)
            self._scan = JsonEnd(len(self._buf) - len(body))
        end = self._held(final)
        if end is None:
            return self._reject(_MISTRAL) if final or self._scan is None else False
        items = load_json(self._buf[self._scan.start : end])
        if isinstance(items, dict):
            items = [items]
        calls = [to_call(item) for item in items] if isinstance(items, list) else []
        valid = [call for call in calls if call is not None]
        if not valid or len(valid) != len(calls):
            return self._reject(_MISTRAL)
        for call in valid:
            self._add(*call)
        self._buf = self._buf[end:]
        self._scan = None
        self._step = self._text
        return True

    def _array_next(self, final: bool) -> bool:
        """Between the calls of an array: ``,`` and another, or ``]`` and content."""
        self._buf = self._buf.lstrip(SPACE)
        if not self._buf:
            return False
        if self._buf.startswith(","):
            self._buf = self._buf[1:]
            self._step = self._array_item
            return True
        self._buf = self._buf.removeprefix("]")
        self._step = self._text
        return True

    def _array_item(self, final: bool) -> bool:
        self._buf = self._buf.lstrip(SPACE)
        if not self._buf:
            return self._unfinished(final)
        if not self._buf.startswith("{"):
            self._step = self._text
            return True
        return self._object_head(0, final, self._array_next, self._item_whole)

    def _item_whole(self, final: bool) -> bool:
        """A later call of an array, not written head first: judged whole, or content."""
        if self._scan is None:
            self._scan = JsonEnd(0)
        end = self._held(final)
        call = None if end is None else to_call(load_json(self._buf[:end]))
        if call is None:
            if end is None and not final and self._scan is not None:
                return False
            self._scan = None
            self._step = self._text  # from this object on, all content
            return True
        self._add(*call)
        self._buf = self._buf[end:]
        self._scan = None
        self._step = self._array_next
        return True

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
        if not _ARGS.startswith(tail) or (name and not _NAME.fullmatch(name)):
            return self._reject(_MISTRAL)
        return self._unfinished(final)

    def _mistral_args(self, final: bool) -> bool:
        body = self._buf[self._from :].lstrip(SPACE)
        if not body and len(self._buf) - self._from <= HEAD_LIMIT:
            return self._unfinished(final)
        if not body.startswith("{"):
            return self._reject(_MISTRAL)
        self._open_call(self._name, len(self._buf) - len(body), self._text)
        return True

    # --- llama3 ---------------------------------------------------------------

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
            self._from = len(self._buf) - len(body)
            self._step = self._llama_head
        else:
            self._step = self._plain
        return True

    def _llama_head(self, final: bool) -> bool:
        head = read_head(self._buf, self._from)
        if head.state == "call":
            self._open_call(head.name, head.args, self._object_close, then=self._llama_separator)
            return True
        if head.state == "maybe":
            if final:  # unmarked JSON cut short: no call was sure, so it is content
                self._step = self._plain
            return final
        self._scan = JsonEnd(self._from)
        self._step = self._llama_object
        return True

    def _llama_object(self, final: bool) -> bool:
        """A call not written head first, judged whole."""
        end = self._held(final)
        # Unmarked JSON needs "arguments"/"parameters" to be a call: a JSON answer
        # that merely has a "name" key stays content.
        call = None
        if end is not None and self._scan is not None:
            call = load_call(self._buf[self._scan.start : end], need_args=True)
        if call is None:
            if end is None and not final and self._scan is not None:
                return False
            self._step = self._plain  # from the leading whitespace or tag on: all content
            return True
        self._buf = self._buf[end:]
        self._add(*call)
        self._step = self._llama_separator
        return True

    def _llama_separator(self, final: bool) -> bool:
        self._buf = self._buf.lstrip(_LLAMA_SEPARATORS)
        if not self._buf:
            return False
        if self._buf[0] == "{":
            self._from = 0
            self._step = self._llama_head
        else:
            self._step = self._plain  # text after the calls is content
        return True

    def _plain(self, final: bool) -> bool:
        self._emit(self._buf)
        self._buf = ""
        return False

    # --- a call's object and arguments ----------------------------------------

    def _object_head(
        self,
        at: int,
        final: bool,
        then: Callable[[bool], bool],
        whole: Callable[[bool], bool],
    ) -> bool:
        """A call object starting at ``at``: streamed once its head is in, else ``whole``."""
        head = read_head(self._buf, at)
        if head.state == "call":
            self._open_call(head.name, head.args, self._object_close, then=then)
            return True
        if head.state == "maybe":
            return self._unfinished(final)
        self._step = whole
        return True

    def _open_call(
        self,
        name: str,
        at: int,
        after: Callable[[bool], bool],
        then: Callable[[bool], bool] | None = None,
        tags: bool = False,
    ) -> None:
        """The head is in: the call goes out, and its arguments open at ``at``."""
        self._start_call(name)
        self._buf = self._buf[at:]
        self._scan = JsonEnd(0, tags)
        self._after, self._then = after, then or self._text
        self._step = self._arguments

    def _arguments(self, final: bool) -> bool:
        """A call's arguments, passed on as they arrive, up to the brace that closes them."""
        scan = self._scan
        assert scan is not None
        end = scan.end(self._buf)
        if end is not None:
            self._add_arguments(self._buf[:end])
            self._calls[-1].complete = True
            self._buf = self._buf[end:]
            self._scan = None
            self._step = self._after
            return True
        scanned = scan.scanned
        self._add_arguments(self._buf[:scanned])
        self._buf = self._buf[scanned:]
        scan.shift(scanned)
        if scan.tag is None:
            return False  # at the end of the output the call stays, cut short
        # A '<' outside the JSON strings (hermes): markup may end the call here.
        if self._buf.startswith((_HERMES_CLOSE, _HERMES_OPEN)):
            self._buf = self._buf.removeprefix(_HERMES_CLOSE)
            self._scan = None
            self._step = self._text
            return True
        if _HERMES_CLOSE.startswith(self._buf) or _HERMES_OPEN.startswith(self._buf):
            return False  # a marker may be arriving; at the end, one cut short is dropped
        scan.skip_tag()
        return True

    def _object_close(self, final: bool) -> bool:
        """After the arguments, the brace that closes the call object."""
        self._buf = self._buf.lstrip(SPACE)
        if not self._buf and not final:
            return False
        self._buf = self._buf.removeprefix("}")
        self._step = self._then
        return True

    # --- shared ---------------------------------------------------------------

    def _held(self, final: bool) -> int | None:
        """Where the JSON held since ``_scan.start`` ends; None while it has not, or
        (``_scan`` cleared) once it ran past ``_HOLD_LIMIT`` or the output ended."""
        assert self._scan is not None
        end = self._scan.end(self._buf)
        if (len(self._buf) if end is None else end) - self._scan.start > _HOLD_LIMIT:
            self._scan = None
            return None
        if end is None and final:
            self._scan = None
        return end

    def _unfinished(self, final: bool) -> bool:
        """Inside markup that is not yet a call: wait; at the end, show nothing of it."""
        if final:
            self._buf = ""
        return False

    def _reject(self, marker: str) -> bool:
        """The marker did not open a call: it is content, and what followed is rescanned."""
        self._emit(marker)
        self._scan = None
        self._step = self._text
        return True

    def _start_call(self, name: str) -> None:
        call = _Call("call_" + uuid.uuid4().hex[:24], name)
        self._deltas.append(ToolCallDelta(len(self._calls), id=call.id, name=name))
        self._calls.append(call)

    def _add_arguments(self, text: str) -> None:
        if text:
            self._calls[-1].pieces.append(text)
            self._deltas.append(ToolCallDelta(len(self._calls) - 1, arguments=text))

    def _add(self, name: str, arguments: str) -> None:
        """A call judged whole."""
        self._start_call(name)
        self._add_arguments(arguments)
        self._calls[-1].complete = True

    def _emit(self, text: str) -> None:
        """Queue content so that the whole stream comes out stripped, as a whole parse does."""
        if self._forced:
            return
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
        """What is ready, argument fragments of one call joined."""
        deltas: list[ToolCallDelta] = []
        for delta in self._deltas:
            if deltas and deltas[-1].index == delta.index and delta.id is None:
                deltas[-1] = replace(deltas[-1], arguments=deltas[-1].arguments + delta.arguments)
            else:
                deltas.append(delta)
        content = "".join(self._content)
        self._content, self._deltas = [], []
        return content, deltas
