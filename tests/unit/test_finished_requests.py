"""The neuron's finished generations by request id: the newest kept, the oldest dropped."""

from __future__ import annotations

from cortex.neuron.api.finished import FinishedRequests
from cortex.protocol.neuron import FinishedRequest


def finished(request_id: str, completion_tokens: int = 1) -> FinishedRequest:
    return FinishedRequest(
        request_id=request_id,
        model="m",
        finish="cancelled",
        prompt_tokens=10,
        completion_tokens=completion_tokens,
        cached_tokens=0,
        ttft_ms=None,
    )


def test_bounded_by_count_oldest_first() -> None:
    kept = FinishedRequests(kept=2)
    for request_id in ("a", "b", "c"):
        kept.add(finished(request_id))
    assert kept.get("a") is None
    assert kept.get("b") is not None and kept.get("c") is not None
    kept.add(finished("b", completion_tokens=7))  # the same id again: the newest count
    kept.add(finished("d"))
    assert kept.get("c") is None and kept.get("b").completion_tokens == 7  # type: ignore[union-attr]
