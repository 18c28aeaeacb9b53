"""Saved sequences' KV on disk, so a conversation's cache outlives an unload, a crash
of the engine process and a restart of the neuron.

One folder per cache key (the model file and the settings that shape its KV, see
``cache_key``), one file per saved sequence: a small header (the key, the tokens the KV
covers, the state's size and blake2b digest) then llama.cpp's state of that sequence.
At start the headers are read (not the states) to index what is there; a state is read
only when a prompt would use it, and is used only if its key and digest check out, so
a corrupt file, one cut short by a crash, or one from another model or setting is
removed and never handed to llama.cpp. Files are written whole to a temporary name and
renamed, so a reader never sees half of one.

Least recently used entries go first once the folder is over its byte budget; "used"
is the file's mtime, which survives restarts. The index is a list scanned for the
longest shared prefix, as in host RAM: a few thousand entries at most.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from cortex.neuron.engines.llamacpp.host_cache import MIN_SAVED_TOKENS, is_prefix, longest_entry

log = logging.getLogger("cortex.neuron.engines.llamacpp.disk_cache")

MAGIC = b"CXKV\x01"  # the format's name and version: another version is not read
_LENGTH = struct.Struct("<I")
_SAMPLE_BYTES = 4 << 20


def file_identity(path: Path) -> str:
    """A digest standing for a model file: its size and three 4 MiB samples.

    Hashing all of a many-GB file would cost minutes at every load; two different
    weight files of the same size agree nowhere in their tensors, so samples from the
    start (the header and metadata), the middle and the end tell them apart.
    """
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as handle:
        for offset in (0, max(0, size // 2 - _SAMPLE_BYTES // 2), max(0, size - _SAMPLE_BYTES)):
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def cache_key(model_file: str, **settings: object) -> str:
    """The key of a model file's KV under ``settings`` (everything that changes it)."""
    text = json.dumps({"model": model_file, **settings}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass
class DiskEntry:
    tokens: list[int]
    path: Path
    size: int  # bytes on disk
    last_used: float


class DiskCache:
    """Saved sequences for one cache key under ``root / key``, within ``budget_bytes``."""

    def __init__(self, root: Path, key: str, budget_bytes: int) -> None:
        self.key = key
        self.budget_bytes = budget_bytes
        self.folder = root / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self._entries: list[DiskEntry] = []
        for path in self.folder.glob("*.kv"):
            header = _read_header(path)
            if header is None or header.get("key") != key:
                log.warning("kv disk cache: removing unreadable or foreign entry %s", path.name)
                path.unlink(missing_ok=True)
                continue
            stat = path.stat()
            self._entries.append(DiskEntry(header["tokens"], path, stat.st_size, stat.st_mtime))
        for stale in self.folder.glob("*.tmp"):  # a write cut short by a crash
            stale.unlink(missing_ok=True)
        self.used_bytes = sum(e.size for e in self._entries)
        self._evict()

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, prompt: list[int]) -> tuple[DiskEntry | None, int]:
        """The entry sharing the longest prefix with ``prompt``, and how long it is."""
        return longest_entry(self._entries, prompt)

    def covers(self, tokens: list[int]) -> bool:
        """Whether an entry already holds all of ``tokens`` (as its prefix or whole)."""
        return any(is_prefix(tokens, entry.tokens) for entry in self._entries)

    def put(self, tokens: list[int], state: bytes) -> bool:
        """Write ``state`` for ``tokens``; entries it extends are removed. False when it
        is not kept (too short, over the whole budget, or the write failed)."""
        if len(tokens) < MIN_SAVED_TOKENS or len(state) > self.budget_bytes:
            return False
        header = json.dumps(
            {
                "key": self.key,
                "tokens": tokens,
                "state_bytes": len(state),
                "state_blake2b": hashlib.blake2b(state, digest_size=32).hexdigest(),
            }
        ).encode()
        name = hashlib.blake2b(json.dumps(tokens).encode(), digest_size=16).hexdigest()
        path = self.folder / f"{name}.kv"
        partial = path.with_suffix(".tmp")
        try:
            with partial.open("wb") as handle:
                handle.write(MAGIC + _LENGTH.pack(len(header)) + header)
                handle.write(state)
            os.replace(partial, path)
        except OSError as exc:  # a full or read-only disk costs the tier, not the request
            log.warning("kv disk cache: could not write %s: %s", path.name, exc)
            partial.unlink(missing_ok=True)
            return False
        for entry in list(self._entries):
            if entry.path == path or is_prefix(entry.tokens, tokens):
                self._remove(entry, keep_file=entry.path == path)
        size = path.stat().st_size
        self._entries.append(DiskEntry(list(tokens), path, size, time.time()))
        self.used_bytes += size
        self._evict()
        return True

    def read(self, entry: DiskEntry) -> bytes | None:
        """The state of ``entry``, checked; None (and the entry removed) when it fails."""
        try:
            data = entry.path.read_bytes()
        except OSError:
            self._remove(entry)
            return None
        state = _checked_state(data, self.key, entry.tokens)
        if state is None:
            log.warning("kv disk cache: removing corrupt or foreign entry %s", entry.path.name)
            self._remove(entry)
            return None
        entry.last_used = time.time()
        with contextlib.suppress(OSError):
            os.utime(entry.path)
        return state

    def _evict(self) -> None:
        while self.used_bytes > self.budget_bytes and self._entries:
            self._remove(min(self._entries, key=lambda e: e.last_used))

    def _remove(self, entry: DiskEntry, keep_file: bool = False) -> None:
        self._entries.remove(entry)
        self.used_bytes -= entry.size
        if not keep_file:
            entry.path.unlink(missing_ok=True)


def _read_header(path: Path) -> dict | None:
    try:
        with path.open("rb") as handle:
            start = handle.read(len(MAGIC) + _LENGTH.size)
            if not start.startswith(MAGIC) or len(start) < len(MAGIC) + _LENGTH.size:
                return None
            (length,) = _LENGTH.unpack(start[len(MAGIC) :])
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict) or not isinstance(header.get("tokens"), list):
        return None
    return header


def _checked_state(data: bytes, key: str, tokens: list[int]) -> bytes | None:
    """The state in a file's bytes, if it is whole and is ``key``'s KV of ``tokens``."""
    if not data.startswith(MAGIC):
        return None
    try:
        (length,) = _LENGTH.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _LENGTH.size
        header = json.loads(data[start : start + length])
    except (ValueError, struct.error):
        return None
    state = data[start + length :]
    if (
        not isinstance(header, dict)
        or header.get("key") != key
        or header.get("tokens") != tokens
        or header.get("state_bytes") != len(state)
        or header.get("state_blake2b") != hashlib.blake2b(state, digest_size=32).hexdigest()
    ):
        return None
    return state
