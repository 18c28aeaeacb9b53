"""Where a conversation's prefix lives: chain hashes over a request's prompt parts.

A request for a neuron (the OpenAI-like body the neuron gets, after any translation)
is cut into parts in prompt order: for a chat, first what renders before the first
message (the tools and the tool choice), then one part per message; for a text
prompt, fixed runs of characters (or token ids). Each part's hash chains the one
before it, ``h_i = blake2b(h_{i-1} || canonical(part_i))``, so ``h_i`` stands for the
whole prompt up to part ``i``: two requests share ``h_i`` exactly when they share
those parts, whatever comes after.

A neuron keeps the hashes of the requests it admitted, per model, in a bounded
``PrefixSet`` and reports them in ``/status`` (``ModelStatus.prefix_digest``); the
gateway sends a request to the node holding its deepest hash. Both sides hash the
same JSON body (the gateway the one it forwards, the neuron the one it receives), so
they agree without sharing anything but this module.

Depth in parts, not in tokens, is what routing compares: every candidate node is
matched against the same request's chain, so a deeper part is always a longer prefix
of it, and the gateway never needs a tokenizer. How much a match is worth is another
question: a shared tools list or system prompt of a few words saves nothing worth
piling every new conversation onto one node for. ``Chain.counts`` says which depths
are worth routing for: those that reach the conversation's own first user message
(the same conversation, or one that opened identically), and shared openings long
enough (``MIN_SHARED_CHARS``) that prefilling them again costs more than a busier node.
Pure and cheap (no I/O, stdlib only): about a millisecond for a 200 kB conversation.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DIGEST_BYTES = 8  # 64-bit hashes: a collision only costs a cache miss, never a wrong answer
TEXT_CHUNK_CHARS = 512  # a text prompt's part: about a hundred tokens
TOKEN_CHUNK = 128  # a token-id prompt's part
# A shared opening (tools, system prompt) shorter than this, about 1,000 tokens, is
# not worth sending a new conversation to a busier node for.
MIN_SHARED_CHARS = 4096


@dataclass(frozen=True)
class Chain:
    """A request's chain hashes, with what routing needs to weigh a match."""

    hashes: list[str]
    sizes: list[int]  # per depth: the characters of the canonical parts so far
    opening: int  # the depth that reaches the first user message (1 for a text prompt)

    def counts(self, depth: int) -> bool:
        """Whether a node holding the first ``depth`` parts is worth routing to for it."""
        if depth <= 0:
            return False
        return depth >= self.opening or self.sizes[depth - 1] >= MIN_SHARED_CHARS


def prefix_chain(body: Mapping[str, Any]) -> list[str]:
    """The chain hashes (hex) of a chat or text-completion body; empty for anything else."""
    return chain_of(body).hashes


def chain_of(body: Mapping[str, Any]) -> Chain:
    parts, opening = _parts(body)
    hashes: list[str] = []
    sizes: list[int] = []
    for digest, size in _chain(parts):
        hashes.append(digest)
        sizes.append(size + (sizes[-1] if sizes else 0))
    return Chain(hashes, sizes, min(opening, len(hashes)) if hashes else 0)


def _parts(body: Mapping[str, Any]) -> tuple[list[Any], int]:
    messages = body.get("messages")
    if isinstance(messages, list):
        # What the chat template renders before the first message. Sampling fields and
        # response_format change no prompt text here (a grammar constrains the output).
        preamble = {"tools": body.get("tools"), "tool_choice": body.get("tool_choice")}
        first_user = next(
            (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
            len(messages),
        )
        return [preamble, *(_message(m) for m in messages)], first_user + 2
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return _runs(prompt, TEXT_CHUNK_CHARS), 1
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return _runs(prompt, TOKEN_CHUNK), 1
    return [], 0


def _message(message: Any) -> Any:
    # Absent and null say the same; a client that echoes a message back with its nulls
    # (or without them) still continues the same conversation.
    if isinstance(message, dict):
        return {k: v for k, v in message.items() if v is not None}
    return message


def _runs(prompt: Sequence[Any], size: int) -> list[Any]:
    # Whole runs, then the remainder: a longer prompt that extends this one shares every
    # whole run; the remainder matches only the same prompt again.
    return [prompt[start : start + size] for start in range(0, len(prompt), size)]


def _chain(parts: Iterable[Any]) -> Iterator[tuple[str, int]]:
    previous = b""
    for part in parts:
        canonical = json.dumps(
            part, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        )
        previous = hashlib.blake2b(previous + canonical.encode(), digest_size=DIGEST_BYTES).digest()
        yield previous.hex(), len(canonical)


class PrefixSet:
    """Chain hashes seen lately, bounded: the least recently seen are dropped first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._hashes: OrderedDict[str, None] = OrderedDict()

    def add(self, chain: Iterable[str]) -> None:
        for digest in chain:
            self._hashes[digest] = None
            self._hashes.move_to_end(digest)
        while len(self._hashes) > self._capacity:
            self._hashes.popitem(last=False)

    def hashes(self) -> list[str]:
        """Least recently seen first."""
        return list(self._hashes)

    def clear(self) -> None:
        self._hashes.clear()

    def __contains__(self, digest: object) -> bool:
        return digest in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)


def match_depth(chain: Sequence[str], *held: PrefixSet | frozenset[str]) -> int:
    """How many leading parts of ``chain`` any of ``held`` has seen together: the index
    of the deepest hash found, plus one; 0 when none is."""
    for depth in range(len(chain), 0, -1):
        if any(chain[depth - 1] in hashes for hashes in held):
            return depth
    return 0
