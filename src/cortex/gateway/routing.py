"""Which of a model's holders serves one request: where its prefix lives, else the idlest.

A node that holds the longest prefix of the request's prompt (``Node.prefix_depth``:
by the neuron's reported digest, or because this gateway sent that prefix there)
prefills only what is new. That is worth a busier node, but not a queue: a node whose
batch for the model is full makes the request wait for a whole generation to end,
far longer than a prefill takes on a node with room. So:

1. among the holders with room in their batch (all of them when none has room), the
   one with the deepest match, where that match is worth it (``Chain.counts``: the
   conversation's own opening, or a long shared one; a few words of shared system
   prompt must not pull every new conversation onto one node);
2. no match anywhere (a new conversation, or one whose node is gone or full): the
   least loaded; among equally loaded ones, the one sent to least recently, so new
   conversations arriving one at a time still spread over the nodes.

Pure: reads the nodes, changes nothing (the scheduler records the choice).
"""

from __future__ import annotations

from collections.abc import Sequence

from cortex.gateway.fleet import Node
from cortex.protocol.prefix_digest import Chain


def choose_holder(holders: Sequence[Node], model_id: str, chain: Chain | None) -> Node:
    """The node (of a non-empty ``holders``) to send a request with prompt ``chain`` to."""
    with_room = [n for n in holders if not n.full(model_id)] or list(holders)

    def idlest(node: Node) -> tuple[int, float]:
        return node.load(), node.routed_at.get(model_id, 0.0)

    if chain is not None and chain.hashes:
        depths = {node.name: node.prefix_depth(model_id, chain.hashes) for node in with_room}
        deepest = max(depths.values())
        if chain.counts(deepest):
            return min((n for n in with_room if depths[n.name] == deepest), key=idlest)
    return min(with_room, key=idlest)
