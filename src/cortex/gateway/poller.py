"""Reads every neuron's ``/status`` on a fixed interval and records it in the fleet."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cortex.errors import CortexError
from cortex.gateway.fleet import Fleet
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neuron_client import NeuronClient

log = logging.getLogger("cortex.gateway.poller")


class Poller:
    def __init__(
        self,
        fleet: Fleet,
        clients: dict[str, NeuronClient],
        interval_s: float,
        metrics: GatewayMetrics,
    ) -> None:
        self._fleet = fleet
        self._metrics = metrics
        self._clients = clients
        self._interval_s = interval_s
        self._wake = asyncio.Event()

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
        was_up = node.up
        try:
            status = await self._clients[name].status(timeout_s=max(1.0, self._interval_s))
        except CortexError as exc:
            self._fleet.record_miss(name, exc.message)
            if was_up and not node.up:
                log.warning("node=%s down: %s", name, exc.message)
            self._metrics.node_up.labels(name).set(1 if node.up else 0)
            return
        self._fleet.record_status(name, status)
        self._metrics.node_up.labels(name).set(1)
        for device in node.devices:
            self._metrics.node_memory_free.labels(name, str(device.get("id"))).set(
                float(device.get("memory_free_mb") or 0) * 2**20
            )
        if not was_up:
            log.info("node=%s up models=%s", name, sorted(node.models))
