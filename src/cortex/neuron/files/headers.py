"""Model shape and tensor sizes read from file headers, never from the weights.

GGUF: the key/value metadata and tensor table at the front of the file.
safetensors: the JSON header of each file, through ``safe_open``.

Both read only the first pages of a file, so they are cheap even for models
larger than memory; they still touch the disk, so callers on the event loop
run them in a thread.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from safetensors import SafetensorError, safe_open

from cortex.errors import InvalidRequest

_GGUF_MAGIC = b"GGUF"
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}

# Bits per element of every safetensors dtype (sub-byte float types included).
_SAFETENSORS_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


@dataclass(frozen=True)
class Strings:
    """A string array in GGUF metadata, kept as its length only (vocabularies are big)."""

    count: int


@dataclass(frozen=True)
class GGUFHeader:
    fields: dict[str, Any]  # scalars; numeric arrays as tuples; string arrays as ``Strings``
    tensor_bytes: int  # the weights as llama.cpp holds them: every tensor's data, no padding


class _Cursor:
    """Little-endian reads over a memory map, each bounds-checked by ``struct``."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data = data
        self.offset = 0

    def read(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.read("Q")
        raw = self.data[self.offset : self.offset + size]
        if len(raw) != size:
            raise struct.error("string runs past the end of the file")
        self.offset += size
        return raw.decode(errors="replace")

    def value(self, kind: int) -> Any:
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            return self.array()
        return self.read(_SCALAR_FORMATS[GGUFValueType(kind)])

    def array(self) -> tuple | Strings:
        kind, count = self.read("I"), self.read("Q")
        if kind == GGUFValueType.STRING:
            for _ in range(count):  # skipped, not decoded: only the length matters here
                size = self.read("Q")  # (read first: it moves the offset too)
                self.offset += size
            return Strings(count)
        if kind == GGUFValueType.ARRAY:
            return tuple(self.array() for _ in range(count))
        fmt = _SCALAR_FORMATS[GGUFValueType(kind)]
        if count * struct.calcsize(fmt) > len(self.data) - self.offset:
            raise struct.error("array runs past the end of the file")
        values = struct.unpack_from(f"<{count}{fmt}", self.data, self.offset)
        self.offset += count * struct.calcsize(fmt)
        return values


def read_gguf(path: Path) -> GGUFHeader:
    """The metadata and total tensor size of a GGUF file (versions 2 and 3).

    Parsed here rather than with ``gguf.GGUFReader``: that reader builds a numpy
    view for every element of every array, which takes ~3 s for a 49k-token
    vocabulary (and longer for bigger ones); skipping the arrays takes ~50 ms.
    """
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse_gguf(_Cursor(data))
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise InvalidRequest(f"{path.name} is not a readable GGUF file: {exc}") from None


def parse_gguf_prefix(data: bytes, name: str) -> GGUFHeader | None:
    """The header of a GGUF file from its first bytes, or None when they end before
    the tensor table does (fetch more). A file that is not GGUF is an ``InvalidRequest``."""
    try:
        return _parse_gguf(_Cursor(data))
    except struct.error:
        return None
    except (ValueError, KeyError) as exc:
        raise InvalidRequest(f"{name} is not a readable GGUF file: {exc}") from None


def _parse_gguf(cursor: _Cursor) -> GGUFHeader:
    if cursor.data[:4] != _GGUF_MAGIC:
        raise ValueError("bad magic")
    cursor.offset = 4
    version = cursor.read("I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version} (or a big-endian file)")
    n_tensors, n_fields = cursor.read("Q"), cursor.read("Q")
    fields = {}
    for _ in range(n_fields):
        key = cursor.string()
        fields[key] = cursor.value(cursor.read("I"))
    tensor_bytes = 0
    for _ in range(n_tensors):
        cursor.string()  # name
        n_dims = cursor.read("I")
        if n_dims > 8:
            raise ValueError(f"tensor with {n_dims} dimensions")
        elements = 1
        for _ in range(n_dims):
            elements *= cursor.read("Q")
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(cursor.read("I"))]
        cursor.read("Q")  # data offset
        tensor_bytes += elements // block_size * type_size
    return GGUFHeader(fields, tensor_bytes)


def safetensors_bytes(files: list[Path]) -> int:
    """Total tensor data in safetensors ``files``: shape x dtype size from each header.

    ``safe_open`` reads the header only until a tensor is asked for, and reports
    dtype and shape for every dtype, bf16 included (numpy has no bf16 to load into).
    """
    total = 0
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    view = handle.get_slice(name)
                    elements = 1
                    for size in view.get_shape():
                        elements *= size
                    total += -(-elements * _SAFETENSORS_BITS[view.get_dtype()] // 8)
        except KeyError as exc:
            raise InvalidRequest(f"{file.name}: unknown safetensors dtype {exc}") from None
        except (OSError, SafetensorError) as exc:
            raise InvalidRequest(f"{file.name} is not a readable safetensors file: {exc}") from None
    return total
