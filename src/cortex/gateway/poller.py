"""Reads every neuron's ``/status`` on a fixed interval and records it in the fleet.

An answer this gateway cannot use is recorded as the node's error: a body that is not
the contract's is a miss (the node goes down after ``down_after_misses`` of them), one
in another contract major marks the node incompatible (shown, never routed to).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from cortex.errors import CortexError
from cortex.gateway.fleet import Fleet
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neuron_client import NeuronClient, NeuronIncompatible

log = logging.getLogger("cortex.gateway.poller")


class Poller:
    def __init__(
        self,
        fleet: Fleet,
        clients: Mapping[str, NeuronClient],
        interval_s: float,
        metrics: GatewayMetrics,
    ) -> None:
        self._fleet = fleet
        self._metrics = metrics
        self._clients = clients
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        # Called with a node's name when it becomes usable (first seen, or back after a
        # restart): the gateway loads its pinned models there again.
        self.on_node_up: Callable[[str], None] | None = None
        # Called with a node's name when it goes down: its answers in flight are ended.
        self.on_node_down: Callable[[str], None] | None = None

    async def poll_once(self) -> None:
        await asyncio.gather(*(self.poll_node(name) for name in self._clients))

    def poke(self) -> None:
        """Poll now rather than at the next tick (after a load or a failure)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.poll_once()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)

    async def poll_node(self, name: str) -> None:
        """Read one node's ``/status`` now and record the answer or the miss."""
        node = self._fleet.nodes[name]
        was_up, was_usable, was_error = node.up, node.usable, node.error
        try:
            status = await self._clients[name].status(timeout_s=max(1.0, self._interval_s))
        except NeuronIncompatible as exc:
            self._fleet.record_incompatible(name, exc.contract, exc.message)
        except CortexError as exc:
            self._fleet.record_miss(name, exc.message)
            if was_up and not node.up:
                log.warning("node=%s down: %s", name, exc.message)
                if self.on_node_down is not None:
                    self.on_node_down(name)
        else:
            self._fleet.record_status(name, status)
        self._metrics.node_up.labels(name).set(1 if node.usable else 0)
        if node.usable:
            for device in node.devices:
                self._metrics.node_memory_free.labels(name, device.id).set(
                    device.memory_free_mb * 2**20
                )
        if node.usable and not was_usable:
            log.info("node=%s up models=%s", name, sorted(node.models))
            if self.on_node_up is not None:
                self.on_node_up(name)
        elif not node.compatible and node.error != was_error:  # once per reason
            log.warning("node=%s incompatible: %s", name, node.error)
