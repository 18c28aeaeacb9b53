"""Turning a token stream into client text: incremental UTF-8 and stop strings.

Pure and engine-independent so every engine stops on strings the same way.
"""

from __future__ import annotations

import codecs


class StopMatcher:
    """Holds back text that might be the start of a stop string.

    ``feed`` returns the text that is safe to emit now; once a stop string is
    seen, ``matched`` names it and everything from it onwards is dropped.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if self.matched is not None:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        hits = [(buffer.find(stop), stop) for stop in self._stops]
        hits = [(at, stop) for at, stop in hits if at >= 0]
        if hits:
            at, stop = min(hits)
            self.matched = stop
            self._held = ""
            return buffer[:at]
        keep = self._longest_partial(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The held-back text, once no more text will come."""
        held, self._held = self._held, ""
        return held

    def _longest_partial(self, buffer: str) -> int:
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:size]):
                    best = size
                    break
        return best


class TextAssembler:
    """Token pieces (bytes) in, client text out, split only at character boundaries."""

    def __init__(self, stops: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = StopMatcher(stops)

    def feed(self, piece: bytes) -> str:
        return self.stop.feed(self._decoder.decode(piece))

    def finish(self) -> str:
        tail = self.stop.feed(self._decoder.decode(b"", final=True))
        return tail + (self.stop.flush() if self.stop.matched is None else "")
