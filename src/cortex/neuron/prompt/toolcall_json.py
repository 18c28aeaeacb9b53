"""JSON scanning for tool-call parsing: where an object closes in a growing text,
whether a text begins a call's head, and whole calls out of finished JSON.

Pure helpers of ``toolcalls.py`` (its stream parser's states use them), kept apart so
that file reads as the state machine it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

SPACE = " \t\r\n"
# The longest head (``{"name": ..., "arguments": {``) held before it is judged: room
# for a 256-character name and generous whitespace.
HEAD_LIMIT = 512


OBJECT_END = re.compile(r"\s*\}?\s*")


class JsonEnd:
    """Finds where the JSON object or array opening at ``start`` closes.

    Remembers its position so a growing buffer is scanned once, not once per piece.
    With ``tags``, a ``<`` outside strings (JSON has none there) stops the scan at
    ``tag`` for the caller to look at: it may be markup that ends the call.
    """

    _TOKENS = re.compile(r'\\.?|["{}\[\]]', re.S)
    _TOKENS_AND_TAGS = re.compile(r'\\.?|["{}\[\]<]', re.S)

    def __init__(self, start: int, tags: bool = False) -> None:
        self.start = start
        self.tag: int | None = None
        self._tokens = self._TOKENS_AND_TAGS if tags else self._TOKENS
        self._pos = start
        self._depth = 0
        self._in_string = False

    @property
    def scanned(self) -> int:
        """How far the text is settled: up to a trailing backslash or a ``tag``."""
        return self._pos

    def end(self, text: str) -> int | None:
        """Index just past the closing bracket, or None while it has not arrived."""
        for match in self._tokens.finditer(text, self._pos):
            token = match.group()
            if token == "\\":
                self._pos = match.start()  # the escaped character has not arrived yet
                return None
            if token == '"':
                self._in_string = not self._in_string
            elif self._in_string or token[0] == "\\":
                continue
            elif token == "<":
                self._pos = self.tag = match.start()
                return None
            elif token in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return match.end()
        self._pos = len(text)
        return None

    def skip_tag(self) -> None:
        """The ``<`` at ``tag`` is no markup: scan on past it."""
        assert self.tag is not None
        self._pos, self.tag = self.tag + 1, None

    def shift(self, count: int) -> None:
        """The text lost its first ``count`` characters."""
        self.start -= count
        self._pos -= count
        if self.tag is not None:
            self.tag -= count


@dataclass(frozen=True)
class Head:
    """What the start of a call object says so far: a call, maybe one, or none."""

    state: Literal["call", "maybe", "no"]
    name: str = ""
    args: int = 0  # where the arguments object opens


MAYBE = Head("maybe")
NO = Head("no")
# The head of a call, one step at a time, whitespace between the steps; None: the name.
HEAD_STEPS: tuple[tuple[str, ...] | None, ...] = (
    ("{",),
    ('"name"',),
    (":",),
    None,
    (",",),
    ('"arguments"', '"parameters"'),
    (":",),
    ("{",),
)
_NAME_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.){1,256}"')
_NAME_BEGUN = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.){0,256}\\?')


def read_head(text: str, start: int) -> Head:
    """Whether ``text`` from ``start`` is ``{"name": "<name>", "arguments": {``, begins it,
    or cannot (another key order, arguments as a string, a head over ``HEAD_LIMIT``)."""
    pos, name = start, ""
    for step in HEAD_STEPS:
        while pos < len(text) and text[pos] in SPACE:
            pos += 1
        if pos - start > HEAD_LIMIT:
            return NO
        if pos == len(text):
            return MAYBE
        if step is None:
            whole = _NAME_STRING.match(text, pos)
            if whole is None:
                begun = _NAME_BEGUN.match(text, pos)
                return MAYBE if begun is not None and begun.end() == len(text) else NO
            name = load_json(whole.group())
            if not isinstance(name, str) or not name:
                return NO
            pos = whole.end()
            continue
        literal = next((word for word in step if text.startswith(word, pos)), None)
        if literal is None:
            rest = text[pos:]
            return MAYBE if any(word.startswith(rest) for word in step) else NO
        pos += len(literal)
    return Head("call", name, pos - 1)


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def load_call(text: str, need_args: bool = False) -> tuple[str, str] | None:
    return to_call(load_json(text), need_args)


def to_call(obj: Any, need_args: bool = False) -> tuple[str, str] | None:
    """(name, arguments) from ``{"name", "arguments"|"parameters"}``, or None if not a call.

    The arguments come back as compact JSON: these calls were judged whole, and some
    models send the arguments as a JSON string, which has to be decoded anyway.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    key = "arguments" if "arguments" in obj else "parameters"
    if key not in obj and need_args:
        return None
    args = obj.get(key, {})
    if isinstance(args, str):  # some models send the arguments as a JSON string
        args = load_json(args)
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False, separators=(",", ":"))
