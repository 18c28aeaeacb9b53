"""A checkpoint's own tokenizer: prompts to ids, generated ids back to text as it grows.

Generated text is decoded incrementally over a short window (the last few prompt
tokens plus what came since the last emitted text), so SentencePiece's leading
spaces and multi-token characters come out right: text is released only when it no
longer ends in a replacement character. Special tokens decode to nothing, as in the
GGUF engine.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

_CONTEXT_TOKENS = 4  # prompt tokens decoded before the first generated one


class HFTokenizer:
    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer

        self._tok: Any = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=False
        )
        # The Rust tokenizer object refuses concurrent use ("Already borrowed").
        self._lock = threading.Lock()
        template = self._tok.chat_template
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default") or next(iter(template.values()), None)
        self.chat_template: str | None = template
        self.bos_token: str = self._tok.bos_token or ""
        self.eos_token: str = self._tok.eos_token or ""
        self.eos_ids = frozenset(_eos_ids(self._tok, path))
        bos_id = self._tok.bos_token_id
        probe = self._tok("a", add_special_tokens=True)["input_ids"]
        self._bos_id: int | None = bos_id if bos_id is not None and probe[:1] == [bos_id] else None

    def encode(self, text: str) -> list[int]:
        """A rendered prompt's ids, special tokens parsed; BOS added when the tokenizer
        adds one and the template did not already write it."""
        with self._lock:
            ids = list(self._tok(text, add_special_tokens=False)["input_ids"])
        if self._bos_id is not None and not (self.bos_token and text.startswith(self.bos_token)):
            ids.insert(0, self._bos_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        with self._lock:
            return self._tok.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )

    def text_stream(self, prompt: list[int]) -> IncrementalText:
        return IncrementalText(self, prompt[-_CONTEXT_TOKENS:])


class IncrementalText:
    """Generated ids in, new text out (never a partial character)."""

    def __init__(self, tokenizer: HFTokenizer, context: list[int]) -> None:
        self._tok = tokenizer
        self._ids = list(context)
        self._prefix = 0  # start of the window decoded for comparison
        self._read = len(context)  # ids up to here have had their text emitted

    def feed(self, token: int) -> str:
        self._ids.append(token)
        before = self._tok.decode(self._ids[self._prefix : self._read])
        after = self._tok.decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def finish(self) -> str:
        """Whatever is still held back (an incomplete character, as a replacement)."""
        before = self._tok.decode(self._ids[self._prefix : self._read])
        after = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""


def _eos_ids(tok: Any, path: Path) -> set[int]:
    ids: set[int] = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    try:
        generation = json.loads((path / "generation_config.json").read_text())
    except (OSError, ValueError):
        generation = {}
    value = generation.get("eos_token_id") if isinstance(generation, dict) else None
    if isinstance(value, int):
        ids.add(value)
    elif isinstance(value, list):
        ids.update(int(v) for v in value if isinstance(v, int))
    return ids
