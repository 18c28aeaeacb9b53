"""Streaming chat-completion clients, timed on the client side, and rates over streams."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class StreamResult:
    """One streamed chat completion, timed on the client."""

    t_sent: float
    t_first: float = 0.0  # first non-empty content chunk
    t_last: float = 0.0  # last non-empty content chunk
    t_end: float = 0.0  # stream closed
    content_chunks: int = 0
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    text: str = ""

    @property
    def completion_tokens(self) -> int:
        return self.usage["completion_tokens"] if self.usage else self.content_chunks

    @property
    def ttft(self) -> float:
        return self.t_first - self.t_sent

    @property
    def decode_rate(self) -> float:
        return self.completion_tokens / max(self.t_last - self.t_first, 1e-9)


def chat_body(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def stream_chat(client: httpx.Client, url: str, body: dict[str, Any]) -> StreamResult:
    """Send one streaming chat completion; time its content chunks as they arrive."""
    result = StreamResult(t_sent=time.perf_counter())
    parts: list[str] = []
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if chunk.get("usage"):
                result.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter()
                    result.t_first = result.t_first or now
                    result.t_last = now
                    result.content_chunks += 1
                    parts.append(content)
                result.finish_reason = choice.get("finish_reason") or result.finish_reason
    result.t_end = time.perf_counter()
    result.text = "".join(parts)
    return result


def run_concurrent(url: str, bodies: list[dict[str, Any]]) -> list[StreamResult]:
    """All ``bodies`` at once, one thread each, released together by a barrier."""
    results: list[StreamResult | BaseException | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))
    limits = httpx.Limits(max_connections=len(bodies) + 2)
    with httpx.Client(timeout=600, limits=limits) as client:

        def worker(index: int) -> None:
            try:
                barrier.wait()
                results[index] = stream_chat(client, url, bodies[index])
            except BaseException as exc:
                results[index] = exc

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for result in results:
        if not isinstance(result, StreamResult):
            raise RuntimeError(f"a concurrent request failed: {result!r}")
    return results  # type: ignore[return-value]


def aggregate_rate(results: list[StreamResult]) -> float:
    wall = max(r.t_end for r in results) - min(r.t_sent for r in results)
    return sum(r.completion_tokens for r in results) / wall


def decode_phase_rate(results: list[StreamResult]) -> float:
    """Tokens after each stream's first, over the time from the last first token to the end.

    Leaves prompt processing out, so it compares with the raw batched ceiling (line 2r).
    """
    span = max(r.t_last for r in results) - max(r.t_first for r in results)
    return sum(r.completion_tokens - 1 for r in results) / max(span, 1e-9)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]
