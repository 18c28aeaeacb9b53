"""The last minutes of finished requests, kept by the gateway for its own views.

Prometheus keeps the history; this keeps just enough for ``cortex status`` (the
last minute's request rate) and the ``/ui`` charts (request rate, TTFT and
output tokens/s per model) to work with no Prometheus at all.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestSample:
    """One finished API request, as recorded when its response ended."""

    at: float  # wall-clock time it finished
    model: str
    node: str
    dialect: str
    status: int
    duration_s: float
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float | None = None


class RecentRequests:
    """A bounded window of samples; old ones fall off as new ones arrive."""

    def __init__(self, window_s: float = 900.0, max_samples: int = 50_000) -> None:
        self._window_s = window_s
        self._samples: deque[RequestSample] = deque(maxlen=max_samples)

    def add(self, sample: RequestSample) -> None:
        self._samples.append(sample)
        self._trim(sample.at)

    def rate_per_min(self, model: str | None = None, now: float | None = None) -> int:
        """Requests that finished in the last 60 s (for ``model``, or all)."""
        since = (time.time() if now is None else now) - 60
        return sum(1 for s in reversed(self._samples) if s.at > since and model in (None, s.model))

    def series(
        self, *, span_s: float = 600, step_s: float = 10, now: float | None = None
    ) -> dict[str, Any]:
        """Per model and time bucket: requests, errors, median TTFT, median tokens/s.

        ``{"start", "step_s", "buckets", "models": {model: {"requests": [...],
        "errors": [...], "ttft_s": [...], "tokens_per_s": [...]}}}``; a bucket with no
        sample has ``None`` for the medians (a gap in the chart, not a zero).
        """
        now = time.time() if now is None else now
        self._trim(now)
        buckets = max(1, int(span_s // step_s))
        start = now - buckets * step_s
        grouped: dict[str, list[list[RequestSample]]] = {}
        for sample in self._samples:
            if sample.at <= start:
                continue
            index = min(buckets - 1, int((sample.at - start) // step_s))
            grouped.setdefault(sample.model, [[] for _ in range(buckets)])[index].append(sample)
        models = {
            model: {
                "requests": [len(bucket) for bucket in per_bucket],
                "errors": [sum(s.status >= 400 for s in bucket) for bucket in per_bucket],
                "ttft_s": [_median(s.ttft_s for s in bucket) for bucket in per_bucket],
                "tokens_per_s": [_median(s.tokens_per_s for s in bucket) for bucket in per_bucket],
            }
            for model, per_bucket in sorted(grouped.items())
        }
        return {"start": start, "step_s": step_s, "buckets": buckets, "models": models}

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0].at < now - self._window_s:
            self._samples.popleft()


def _median(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None
