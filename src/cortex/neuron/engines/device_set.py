"""A load's devices as one string through the engine process: ``"cuda:2,cuda:3"``.

A model over several devices (tensor-parallel ranks, a GGUF split) reaches its engine
as the comma-joined ids, main device (rank 0, llama.cpp's ``main_gpu``) first; a
single device is its id alone, so engines and the wire to the engine process keep
the one ``device_id`` string they always had.
"""

from __future__ import annotations

from collections.abc import Sequence


def join_devices(ids: Sequence[str]) -> str:
    return ",".join(ids)


def split_devices(device_id: str) -> list[str]:
    return [part for part in device_id.split(",") if part]
