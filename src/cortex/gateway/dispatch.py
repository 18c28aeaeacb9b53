"""One path for every API request that a neuron answers, whatever its dialect.

``dispatch`` checks the key, reads the body (never past the size limit), picks a
node (the conversation's own where there is a choice) and proxies: a stream through
a ``Renderer``, a plain answer whole. What differs per endpoint is one ``Prepare``
step, supplied by the dialect's route: parse the body, resolve the model name it
holds, and say what goes to the neuron and how the answer comes back (``Forward``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cortex.bodies import read_body
from cortex.disconnect import unless_disconnected
from cortex.errors import ModelNotFound
from cortex.gateway.affinity import session_key
from cortex.gateway.auth import current_identity
from cortex.gateway.limits import may_use
from cortex.gateway.proxy import UpstreamRequest
from cortex.gateway.recording import forwarded_headers, record
from cortex.gateway.renderers import Renderer
from cortex.gateway.state import GatewayState, state_of
from cortex.protocol.prefix_digest import chain_of

Resolve = Callable[[str], str]  # a client's model name (id or alias) -> the model id


def _unchanged(answer: bytes) -> bytes:
    return answer


@dataclass(frozen=True)
class Forward:
    """What one request becomes for the neuron, and how its answer reaches the client."""

    path: str
    model_id: str
    body: Mapping[str, Any]  # as the neuron gets it; routing hashes its prompt's prefix
    raw: bytes | None = None  # ``body`` as the client sent it, forwarded as is when at hand
    renderer: Renderer | None = None  # the client asked for a stream
    answer: Callable[[bytes], bytes] = _unchanged  # a plain answer, in the client's dialect

    def encoded(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.body, separators=(",", ":")).encode()


# The dialect's part: the raw body and a way to resolve model names in, a Forward out.
Prepare = Callable[[bytes, Resolve], Forward]


async def dispatch(request: Request, prepare: Prepare, raw: bytes | None = None) -> Response:
    """``raw``: the body, where the route has already read it (and checked the key)."""
    state = state_of(request)
    if raw is None:
        raw = await read_request(request, state)
    forward = prepare(raw, lambda name: resolve_model(state, name))
    model_id = forward.model_id
    holders = state.scheduler.holders(model_id)
    # Where the prefix lives only matters where there is a choice of node; with one
    # holder its neuron's own digest tells the gateway later, should a second appear.
    choice = len(holders) > 1
    upstream = UpstreamRequest(
        forward.path,
        model_id,
        forward.encoded(),
        forwarded_headers(),
        session=session_key(model_id, request.headers) if choice else None,
        prefix=chain_of(forward.body) if choice else None,
    )
    if forward.renderer is not None:
        return await state.proxy.stream(upstream, forward.renderer, cold=not holders)
    node, answer = await unless_disconnected(request, state.proxy.fetch(upstream))
    return Response(
        forward.answer(answer),
        media_type="application/json",
        headers={"x-cortex-node": node.name},
    )


async def read_request(request: Request, state: GatewayState) -> bytes:
    """The body of an API request, once its key is checked."""
    state.keys.check(request)
    return await read_body(request, state.config.gateway.request_body_limit_mb * 2**20)


def resolve_model(state: GatewayState, name: str) -> str:
    """The model id a client's name (id or alias) stands for, noted on the request's record.
    A model the request's key may not use is a 404, as if it did not exist (docs/keys.md)."""
    model_id = state.scheduler.resolve(name)
    globs = current_identity.get().models
    if globs and not may_use(globs, model_id, name):
        known = state.catalogue.ids(state.fleet.loaded_ids())
        raise ModelNotFound(name, known=[m for m in known if may_use(globs, m)])
    current = record()
    if current is not None:
        current.model = model_id
    return model_id
