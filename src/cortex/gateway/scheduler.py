"""Which node serves a request, loading the model first when no node has it.

Loads are single-flight per model: concurrent requests for a cold model wait
on the same load and all see its outcome.
"""

from __future__ import annotations

import asyncio
import logging

from cortex.errors import (
    CortexError,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    ModelRecovering,
    Unavailable,
)
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.fleet import Fleet, ModelPhase, Node
from cortex.gateway.neuron_client import NeuronClient
from cortex.spec import ModelSpec

log = logging.getLogger("cortex.gateway.scheduler")


class Scheduler:
    def __init__(
        self, fleet: Fleet, catalogue: Catalogue, clients: dict[str, NeuronClient]
    ) -> None:
        self._fleet = fleet
        self._catalogue = catalogue
        self._clients = clients
        self._loads: dict[str, asyncio.Task[Node]] = {}

    def resolve(self, name: str) -> str:
        model_id = self._catalogue.resolve(name, self._fleet.loaded_ids())
        if model_id is None:
            raise ModelNotFound(name, known=self._catalogue.ids(self._fleet.loaded_ids()))
        return model_id

    async def node_for(self, model_id: str, exclude: frozenset[str] = frozenset()) -> Node:
        """The least-loaded up node where ``model_id`` is ready, loading it if needed."""
        holders = [n for n in self._fleet.holders(model_id) if n.name not in exclude]
        if holders:
            return min(holders, key=Node.load)
        self._raise_if_recovering(model_id, exclude)
        profile = self._catalogue.profiles.get(model_id)
        if profile is None:
            raise Unavailable(
                f"The model '{model_id}' is not loaded on any reachable node and has no "
                "profile in models.toml to load it from.",
                retry_after_s=5,
            )
        task = self._loads.get(model_id)
        if task is None:
            task = asyncio.create_task(self._load(profile, exclude))
            self._loads[model_id] = task
            task.add_done_callback(lambda _: self._loads.pop(model_id, None))
        # shield: one waiter giving up must not cancel the load the others wait on
        return await asyncio.shield(task)

    async def warm_pinned(self) -> None:
        """Load every pinned model that no node holds yet (at start-up)."""
        for profile in self._catalogue.profiles.values():
            if profile.pinned and not self._fleet.loaded_on(profile.id):
                try:
                    await self.node_for(profile.id)
                except CortexError as exc:
                    log.error("pinned model=%s not loaded: %s", profile.id, exc.message)

    async def load(self, model_id: str, node_name: str | None = None) -> Node:
        """Explicit load (``/fleet/load``), optionally on a named node."""
        profile = self._catalogue.profiles.get(model_id)
        if profile is None:
            raise InvalidRequest(
                f"The model '{model_id}' has no profile in models.toml to load it from.",
                param="model",
            )
        return await self._load(profile, frozenset(), only=node_name)

    async def unload(self, model_id: str, node_name: str | None = None) -> list[str]:
        names = [node_name] if node_name else self._fleet.loaded_on(model_id)
        if not names:
            raise ModelNotFound(model_id)
        for name in names:
            await self._clients[name].unload(model_id)
            self._fleet.nodes[name].models.pop(model_id, None)
        return names

    def _raise_if_recovering(self, model_id: str, exclude: frozenset[str]) -> None:
        for node in self._fleet.nodes.values():
            model = node.models.get(model_id)
            if (
                node.up
                and node.name not in exclude
                and model is not None
                and model.phase in (ModelPhase.POISONED, ModelPhase.RECOVERING)
            ):
                raise ModelRecovering(model_id)

    async def _load(
        self, profile: ModelSpec, exclude: frozenset[str], only: str | None = None
    ) -> Node:
        candidates = [
            node
            for node in self._fleet.nodes.values()
            if node.up
            and node.name not in exclude
            and (only is None or node.name == only)
            and (not profile.nodes or node.name in profile.nodes)
        ]
        if not candidates:
            raise Unavailable(
                f"No reachable node may load '{profile.id}'"
                + (f" (affinity: {', '.join(profile.nodes)})" if profile.nodes else ""),
                retry_after_s=5,
            )
        errors: list[CortexError] = []
        for node in sorted(candidates, key=Node.load):
            try:
                status = await self._clients[node.name].load(profile.model_dump())
            except InsufficientMemory as exc:
                errors.append(exc)
                continue
            log.info("loaded model=%s node=%s", profile.id, node.name)
            self._fleet.record_model(node.name, status)
            return node
        raise errors[-1]
