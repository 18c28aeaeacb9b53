"""A stand-in neuron that answers instantly: the upstream of the gateway benchmark.

Run as a script (``_fast_upstream.py PORT``) it serves, with aiohttp in its own process,
the part of the neuron API that a gateway in front of it uses:

- ``GET /health``, ``GET /status`` (one CPU device, one ready model ``bench-model``, in
  the shape of ``cortex.neuron.routes.status``), ``GET /v1/models``;
- ``POST /v1/chat/completions``: a fixed chat.completion, or with ``"stream": true`` a
  fixed SSE stream of :data:`STREAM_FRAMES`, one write per frame as a neuron sends them.

Every answer is built once at start-up; a request costs only parsing its JSON body.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _procs import Server, free_port

MODEL_ID = "bench-model"
MODEL_SOURCE = "pkg:x/y.gguf"
NODE_NAME = "fast"
CREATED = 1_700_000_000
ANSWER = "Hello! How can I help you today?"

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": CREATED,
    "model": MODEL_ID,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
}


def _chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


STREAM_FRAMES: list[bytes] = [
    _chunk({"role": "assistant", "content": ""}),
    *(_chunk({"content": piece}) for piece in ("Hello!", " How can I", " help you today?")),
    _chunk({}, "stop"),
    b"data: [DONE]\n\n",
]


def status_body() -> dict[str, Any]:
    """``GET /status`` as a neuron answers it (``LoadedModel.status()`` per model)."""
    from cortex.protocol.neuron import CONTRACT_VERSION
    from cortex.spec import ModelSpec  # the real spec, so ``spec`` has every field

    spec = ModelSpec(id=MODEL_ID, source=MODEL_SOURCE)
    return {
        "contract": CONTRACT_VERSION,
        "node": NODE_NAME,
        "devices": [
            {
                "id": "cpu",
                "name": "cpu",
                "memory_total_mb": 16384,
                "memory_free_mb": 8192,
                "memory_budget_mb": None,
                "memory_used_by_models_mb": 100,
            }
        ],
        "models": [
            {
                "id": MODEL_ID,
                "state": "ready",
                "spec": spec.model_dump(),
                "devices": ["cpu"],
                "memory_mb": 100,
                "context_length": spec.context_length,
                "in_flight": 0,
                "queued": 0,
                "last_used": 0,
            }
        ],
    }


def serve(port: int) -> None:
    import asyncio

    from aiohttp import web

    def fixed(body: Any) -> Callable[[web.Request], Awaitable[web.Response]]:
        raw = json.dumps(body).encode()

        async def handler(_: web.Request) -> web.Response:
            return web.Response(body=raw, content_type="application/json")

        return handler

    completion = json.dumps(COMPLETION).encode()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if not body.get("stream"):
            return web.Response(body=completion, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in STREAM_FRAMES:
            await response.write(frame)
        await response.write_eof()
        return response

    models = [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": NODE_NAME}]
    app = web.Application()
    app.router.add_get("/health", fixed({"status": "ok"}))
    app.router.add_get("/status", fixed(status_body()))
    app.router.add_get("/v1/models", fixed({"object": "list", "data": models}))
    app.router.add_post("/v1/chat/completions", chat)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


def start_fast_upstream(stack: contextlib.ExitStack, log_dir: Path) -> Server:
    port = free_port()
    server = Server("fast_upstream", [sys.executable, __file__, str(port)], port, log_dir)
    stack.callback(server.stop)
    server.wait_until(lambda client: client.get("/health").status_code == 200, timeout_s=30)
    return server


if __name__ == "__main__":
    serve(int(sys.argv[1]))
