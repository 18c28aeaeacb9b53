"""Sequences' KV kept in host RAM, found again by the longest shared token prefix.

The device holds ``max_batch`` KV streams (slots). When a slot must take another
conversation, what it held is saved here (``llama_state_seq_get_data``: the KV of
one sequence, as bytes) instead of being lost; when that conversation comes back,
its state is put into whichever slot is free (``llama_state_seq_set_data``, a copy
of memory, far cheaper than prefilling the tokens again). So any number of
conversations stay cached, not only as many as there are slots.

Why not one unified KV buffer with cells shared between sequences
(``llama_memory_seq_cp``)? With a unified buffer every decode step attends over
every cell in use, cached conversations included: measured on this model and CPU,
single-stream decode fell from 120 to 82 tok/s once three other sequences held
3,500 tokens each, while per-sequence streams stayed at 115-136 tok/s. Keeping the
device for the sequences that run and host RAM for the rest keeps decode fast.

Pure Python over opaque state blobs, so the bookkeeping is unit-tested without a
model. Entries are whole saved sequences; the pool evicts least recently used
entries until it is inside its byte budget. A linear scan finds the longest prefix:
a few hundred entries at most, each compared by binary search over slices (C-speed
list comparisons), not token by token in Python.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

# Saving a sequence costs a copy of its KV; below this many tokens prefilling them
# again is as cheap, so shorter sequences are not kept.
MIN_SAVED_TOKENS = 32


@dataclass
class SavedSequence:
    tokens: list[int]  # what the KV covers, in order
    state: bytes  # llama.cpp's serialised state of that one sequence
    last_used: float = field(default_factory=time.monotonic)


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    low, high = 0, min(len(a), len(b))
    if a[:high] == b[:high]:
        return high
    while low < high:  # invariant: a[:low] == b[:low], a[:high] != b[:high]
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class _Saved(Protocol):
    tokens: list[int]


Entry = TypeVar("Entry", bound=_Saved)


def longest_entry(entries: Sequence[Entry], prompt: list[int]) -> tuple[Entry | None, int]:
    """The entry sharing the longest prefix with ``prompt``, and how long it is."""
    best: Entry | None = None
    best_shared = 0
    for entry in entries:
        shared = shared_prefix(entry.tokens, prompt)
        if shared > best_shared:
            best, best_shared = entry, shared
    return best, best_shared


def is_prefix(head: list[int], tokens: list[int]) -> bool:
    """Whether ``tokens`` starts with all of ``head``."""
    return len(head) <= len(tokens) and shared_prefix(head, tokens) == len(head)


class HostCache:
    """Saved sequences within ``budget_bytes``, least recently used evicted first."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: list[SavedSequence] = []
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, prompt: list[int]) -> tuple[SavedSequence | None, int]:
        """The entry sharing the longest prefix with ``prompt``, and how long it is."""
        return longest_entry(self._entries, prompt)

    def covers(self, tokens: list[int]) -> bool:
        """Whether an entry already holds all of ``tokens`` (as its prefix or whole)."""
        return any(is_prefix(tokens, entry.tokens) for entry in self._entries)

    def put(self, tokens: list[int], state: bytes) -> bool:
        """Keep ``state`` for ``tokens``; entries it extends are dropped. False when it
        cannot fit the budget at all (it is then not kept)."""
        if len(state) > self.budget_bytes or len(tokens) < MIN_SAVED_TOKENS:
            return False
        for entry in list(self._entries):
            if is_prefix(entry.tokens, tokens):
                self._remove(entry)  # the new entry holds all of it and more
        self._entries.append(SavedSequence(list(tokens), state))
        self.used_bytes += len(state)
        while self.used_bytes > self.budget_bytes:
            self._remove(min(self._entries, key=lambda e: e.last_used))
        return True

    def take(self, entry: SavedSequence) -> None:
        """``entry`` is being restored onto the device: most recently used now."""
        entry.last_used = time.monotonic()

    def _remove(self, entry: SavedSequence) -> None:
        self._entries.remove(entry)
        self.used_bytes -= len(entry.state)
