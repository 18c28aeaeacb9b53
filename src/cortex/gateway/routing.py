"""Which of a model's holders serves one request: where its prefix lives, else the idlest.

A node that holds the longest prefix of the request's prompt (``Node.prefix_depth``:
by the neuron's reported digest, or because this gateway sent that prefix there)
prefills only what is new. That is worth a busier node, but not a queue: a node whose
batch for the model is full makes the request wait for a whole generation to end,
far longer than a prefill takes on a node with room. So:

1. among the holders with room in their batch (all of them when none has room), the
   one with the deepest match, where that match is worth it (``Chain.counts``: the
   conversation's own opening, or a long shared one; a few words of shared system
   prompt must not pull every new conversation onto one node), unless it is
   *overloaded* (below);
2. no match anywhere (a new conversation, or one whose node is gone, full or
   overloaded): the one with the fewest outstanding tokens (``Node.outstanding_tokens``:
   prompt estimate + max_tokens of what this gateway has in flight there), then the
   least loaded by requests; among equals, the one sent to least recently, so new
   conversations arriving one at a time still spread over the nodes.

**Overloaded**, for affinity (a prefix or an explicit session): a node whose
outstanding tokens exceed the least loaded holder's by more than one full batch's
worth (the model's ``max_batch`` times the mean tokens of a request in flight on
the holders). Being a whole batch behind costs a request about one generation of
waiting, more than the prefill the affinity saves; anything less, the cache wins.

Pure: reads the nodes, changes nothing (the scheduler records the choice).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cortex.gateway.fleet import Node
from cortex.protocol.prefix_digest import Chain

# The request's generation budget, read without parsing the body (the hot path): the
# forwarded body is OpenAI's shape, and a prompt's text cannot hold this unescaped.
_MAX_TOKENS = re.compile(rb'"max(?:_completion)?_tokens"\s*:\s*(\d+)')
_BYTES_PER_TOKEN = 4  # a rough mean for English and code; only relative sizes matter


@dataclass(frozen=True)
class TokenCost:
    """What one request will occupy on a node: its prompt and its generation budget."""

    prompt: int
    max_new: int | None  # None: the request sets none, so up to the context

    def capped(self, context_length: int) -> int:
        budget = context_length if self.max_new is None else self.max_new
        return min(context_length, self.prompt + budget)


def estimate_cost(body: bytes) -> TokenCost:
    """A forwarded body's cost: its bytes / 4 for the prompt (JSON overhead included:
    cheap, and the same for every request) and its ``max_tokens``."""
    found = _MAX_TOKENS.search(body)
    return TokenCost(len(body) // _BYTES_PER_TOKEN, int(found.group(1)) if found else None)


def choose_holder(holders: Sequence[Node], model_id: str, chain: Chain | None) -> Node:
    """The node (of a non-empty ``holders``) to send a request with prompt ``chain`` to."""
    with_room = [n for n in holders if not n.full(model_id)] or list(holders)

    def idlest(node: Node) -> tuple[int, int, float]:
        return (
            node.outstanding_tokens(model_id),
            node.load(),
            node.routed_at.get(model_id, 0.0),
        )

    if chain is not None and chain.hashes:
        depths = {node.name: node.prefix_depth(model_id, chain.hashes) for node in with_room}
        deepest = max(depths.values())
        if chain.counts(deepest):
            best = min((n for n in with_room if depths[n.name] == deepest), key=idlest)
            if not overloaded(best, holders, model_id):
                return best
    return min(with_room, key=idlest)


def overloaded(node: Node, holders: Sequence[Node], model_id: str) -> bool:
    """``node`` is more than one full batch's worth of tokens behind the least loaded
    of ``holders``: affinity (prefix, session) no longer pays for the wait."""
    least = min(n.outstanding_tokens(model_id) for n in holders)
    return node.outstanding_tokens(model_id) - least > batch_tokens(holders, model_id)


def batch_tokens(holders: Sequence[Node], model_id: str) -> int:
    """One full batch's worth of tokens: ``max_batch`` requests of the mean size in flight."""
    requests = sum(n.active.get(model_id, 0) for n in holders)
    if requests == 0:
        return 0
    mean = sum(n.outstanding_tokens(model_id) for n in holders) / requests
    model = next((n.models[model_id] for n in holders if model_id in n.models), None)
    return int((model.spec.max_batch if model else 1) * mean)
