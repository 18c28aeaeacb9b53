"""Finished generations by request id, for a while: ``GET /requests/{request_id}``.

A client that leaves a stream takes the gateway's connection with it, so the report
that ends every stream (token counts) never reaches the gateway; the generation itself
still ran up to the cut. The gateway asks here afterwards, to account what was really
generated. Bounded by count: a busy node keeps the last few thousand, minutes' worth.
"""

from __future__ import annotations

from collections import OrderedDict

from cortex.protocol.neuron import FinishedRequest

KEPT = 4096


class FinishedRequests:
    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._by_id: OrderedDict[str, FinishedRequest] = OrderedDict()

    def add(self, finished: FinishedRequest) -> None:
        self._by_id[finished.request_id] = finished
        self._by_id.move_to_end(finished.request_id)
        while len(self._by_id) > self._kept:
            self._by_id.popitem(last=False)

    def get(self, request_id: str) -> FinishedRequest | None:
        return self._by_id.get(request_id)


# One per neuron process: request ids are the gateway's, unique across models.
finished_requests = FinishedRequests()
