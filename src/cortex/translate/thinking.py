"""Reasoning a model writes as ``<think>…</think>`` at the start of its text.

One incremental splitter serves both the whole-response and the streaming
converters, so a streamed answer and the same answer returned at once always
split the same way. Whitespace around the reasoning is trimmed: templates put
newlines after ``<think>``, before ``</think>`` and before the answer.
"""

from __future__ import annotations

import hashlib
from enum import Enum, auto
from typing import Literal

OPEN, CLOSE = "<think>", "</think>"

PieceKind = Literal["thinking", "text"]
Piece = tuple[PieceKind, str]


class _State(Enum):
    START = auto()  # nothing decided: the text may still open with <think>
    THINK_LEAD = auto()  # just after <think>: leading whitespace is dropped
    THINK = auto()  # inside the reasoning
    ANSWER_LEAD = auto()  # just after </think>: leading whitespace is dropped
    TEXT = auto()  # the answer, passed through


class ThinkSplitter:
    """Text in, ``("thinking" | "text", piece)`` out; never an empty piece."""

    def __init__(self) -> None:
        self._state = _State.START
        self._held = ""

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        buffer, self._held = self._held + text, ""
        while buffer:
            buffer = self._step(buffer, out)
        return out

    def finish(self) -> list[Piece]:
        """The end of the text: what was held back is decided now."""
        held, self._held = self._held, ""
        if self._state is _State.START and held:
            self._state = _State.TEXT
            return [("text", held)]
        # Inside the reasoning only trailing whitespace and the start of a closing
        # tag cut off by the token limit are ever held: both are dropped.
        return []

    def _step(self, buffer: str, out: list[Piece]) -> str:
        """Consume some of ``buffer``; return what is left for the next step."""
        state = self._state
        if state is _State.START:
            stripped = buffer.lstrip()
            if stripped.startswith(OPEN):
                self._state = _State.THINK_LEAD
                return stripped[len(OPEN) :]
            if OPEN.startswith(stripped):  # "", "  <th": wait for more
                self._held = buffer
                return ""
            self._state = _State.TEXT
            return buffer
        if state in (_State.THINK_LEAD, _State.ANSWER_LEAD):
            stripped = buffer.lstrip()
            if stripped:
                self._state = _State.THINK if state is _State.THINK_LEAD else _State.TEXT
            return stripped
        if state is _State.THINK:
            return self._think(buffer, out)
        out.append(("text", buffer))
        return ""

    def _think(self, buffer: str, out: list[Piece]) -> str:
        at = buffer.find(CLOSE)
        if at >= 0:
            _emit(out, buffer[:at].rstrip())
            self._state = _State.ANSWER_LEAD
            return buffer[at + len(CLOSE) :]
        keep = _partial_suffix(buffer, CLOSE)
        safe = buffer[: len(buffer) - keep].rstrip()
        _emit(out, safe)
        self._held = buffer[len(safe) :]  # trailing whitespace and a possible "</th"
        return ""


def _emit(out: list[Piece], thinking: str) -> None:
    if thinking:
        out.append(("thinking", thinking))


def _partial_suffix(buffer: str, tag: str) -> int:
    """Length of the longest end of ``buffer`` that begins ``tag``."""
    for size in range(min(len(tag) - 1, len(buffer)), 0, -1):
        if buffer.endswith(tag[:size]):
            return size
    return 0


def signature_for(thinking: str) -> str:
    """An opaque, stable signature: the gateway never checks it (thinking is dropped
    on the way back), but clients require a non-empty one."""
    return "cortex-" + hashlib.sha256(thinking.encode()).hexdigest()[:32]
