"""Request bodies read with a size limit, shared by the gateway and the neuron.

Starlette's ``request.body()`` buffers the whole body before anyone can look at its
size, so a chunked upload (no Content-Length) of gigabytes is read into memory whole.
Here the limit is enforced while reading: the 413 goes out as soon as it is passed.
"""

from __future__ import annotations

from starlette.requests import Request

from cortex.errors import RequestTooLarge

MIB = 2**20


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes: one sent without
    a Content-Length (chunked) is read no further than that either."""
    too_large = f"The request body is over the {limit // MIB} MB limit."
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise RequestTooLarge(too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(too_large)
        chunks.append(chunk)
    return b"".join(chunks)
