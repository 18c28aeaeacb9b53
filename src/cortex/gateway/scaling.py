"""Carrying out the replica decisions (``replicas.decide``) against the fleet.

Each housekeeping round (about a second) ``ReplicaControl.step`` builds a
``ModelLoad`` per model whose profile allows more than one copy, asks ``decide``,
and starts what it says in the background, so a load of several seconds holds up
neither the round nor requests:

- ``AddCopy``: a load planned exactly as a cold load (``Scheduler.load_copy``:
  placement's own rules, which never evict a busy or pinned model), away from the
  nodes that hold a copy already. The neuron keeps one copy of a model id per node,
  so copies are always on different nodes. A load that fails is logged once and the
  model backs off (5 s, doubling up to 5 min) before another try.
- ``RetireCopy``: that copy is unloaded, unless a request reached it meanwhile.

One step per model at a time: nothing is decided for a model while its last step is
under way, or while a request's cold load of it is.

``waiting`` (the gateway's fair queue, set by the app) plus the neurons' polled
``queued`` is the model's queue; the time it has stayed deeper than ``max_batch`` is
tracked here. Each decision logs one line (``replica model=… node=… action=…
reason=…``) and is kept, the last per model, for ``/fleet`` and ``cortex status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from cortex.errors import CortexError
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.replicas import (
    AddCopy,
    Copy,
    Decision,
    ModelLoad,
    RetireCopy,
    decide,
    queue_is_deep,
)
from cortex.protocol.neuron import ModelState
from cortex.spec import ModelSpec

log = logging.getLogger("cortex.gateway.replicas")

LoadCopy = Callable[[ModelSpec, frozenset[str]], Awaitable[Node]]
RetireOne = Callable[[Node, str], Awaitable[None]]

FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 300.0


@dataclass(frozen=True)
class ScaleEvent:
    """The last scale decision for a model, as ``/fleet`` shows it."""

    action: Literal["add", "retire"]
    node: str | None  # None: an add whose load failed before a node was chosen
    reason: str
    at: float
    error: str | None = None  # the load failed: why (and a retry waits)


@dataclass
class _Backoff:
    until: float
    delay_s: float


class ReplicaControl:
    def __init__(
        self,
        fleet: Fleet,
        catalogue: Catalogue,
        metrics: GatewayMetrics,
        load_copy: LoadCopy,
        retire: RetireOne,
        cold_loading: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fleet = fleet
        self._catalogue = catalogue
        self._metrics = metrics
        self._load_copy = load_copy
        self._retire = retire
        self._cold_loading = cold_loading
        self.clock = clock
        # The gateway's own queue per model (``FairQueue.waiting``) and a way to admit
        # what waits there once a copy adds places; set by the app, no-ops alone.
        self.waiting: Callable[[str], int] = lambda _: 0
        self.places_grew: Callable[[str], None] = lambda _: None
        self.last: dict[str, ScaleEvent] = {}
        self._steps: dict[str, asyncio.Task[Any]] = {}  # by model id: one at a time
        self._deep_since: dict[str, float] = {}
        self._backoff: dict[str, _Backoff] = {}

    def configured(self) -> bool:
        """Some profile may run more than one copy: otherwise a round does nothing."""
        return any(p.max_replicas > 1 for p in self._catalogue.profiles.values())

    def copies(self, model_id: str) -> list[str]:
        """Nodes where the model is ready now."""
        return [node.name for node in self._fleet.holders(model_id)]

    def step(self) -> list[Decision]:
        """One round: decide for every model with replicas, start what was decided."""
        for model_id in self._catalogue.profiles:  # cheap: a count per profile
            self._metrics.replicas.labels(model_id).set(len(self._fleet.holders(model_id)))
        if not self.configured():
            return []
        now = self.clock()
        loads = [
            load
            for profile in self._catalogue.profiles.values()
            if profile.max_replicas > 1 and (load := self._load_of(profile, now)) is not None
        ]
        decisions = [
            decision
            for decision in decide(loads)
            if not (isinstance(decision, AddCopy) and self._backing_off(decision.model_id, now))
        ]
        for decision in decisions:
            self._start(decision)
        return decisions

    def _backing_off(self, model_id: str, now: float) -> bool:
        backoff = self._backoff.get(model_id)
        return backoff is not None and now < backoff.until

    async def settle(self) -> None:
        """Wait for the steps under way (tests; shutdown)."""
        while self._steps:
            await asyncio.gather(*self._steps.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._steps.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the snapshot ------------------------------------------------------------------

    def _load_of(self, profile: ModelSpec, now: float) -> ModelLoad | None:
        model_id = profile.id
        holders = self._fleet.holders(model_id)
        waiting = self.waiting(model_id) + sum(n.models[model_id].queued for n in holders)
        if queue_is_deep(waiting, profile.max_batch):
            since = self._deep_since.setdefault(model_id, now)
        else:
            self._deep_since.pop(model_id, None)
            since = now
        if model_id in self._steps or self._cold_loading(model_id):
            return None  # see what the step under way does first
        loading = sum(1 for n in self._fleet.usable() if n.phase(model_id) is ModelState.LOADING)
        copies = tuple(
            Copy(n.name, max(0.0, now - n.last_used(model_id)), n.busy(model_id)) for n in holders
        )
        return ModelLoad(
            model_id=model_id,
            min_replicas=profile.min_replicas,
            max_replicas=profile.max_replicas,
            max_batch=profile.max_batch,
            scale_up_after_s=profile.scale_up_after_s,
            scale_down_after_s=profile.scale_down_after_s,
            copies=copies,
            loading=loading,
            waiting=waiting,
            deep_for_s=now - since,
        )

    # -- acting ------------------------------------------------------------------------

    def _start(self, decision: Decision) -> None:
        model_id = decision.model_id
        if isinstance(decision, AddCopy):
            self._deep_since.pop(model_id, None)  # the next copy needs a deep queue of its own
            work = self._add(decision)
        else:
            node = self._fleet.nodes[decision.node]
            if node.busy(model_id):  # a request reached it since the snapshot
                return
            work = self._remove(node, decision)
        task = asyncio.create_task(work, name=f"replica {model_id}")
        self._steps[model_id] = task
        task.add_done_callback(lambda _: self._steps.pop(model_id, None))

    async def _add(self, decision: AddCopy) -> None:
        model_id = decision.model_id
        profile = self._catalogue.profiles[model_id]
        try:
            node = await self._load_copy(profile, decision.avoid_nodes)
        except CortexError as exc:
            backoff = self._backoff.get(model_id)
            delay = min(MAX_BACKOFF_S, backoff.delay_s * 2) if backoff else FIRST_BACKOFF_S
            self._backoff[model_id] = _Backoff(self.clock() + delay, delay)
            self.last[model_id] = ScaleEvent(
                "add", None, decision.reason, self.clock(), exc.message
            )
            log.warning(
                "replica model=%s node=- action=add reason=%s failed=%s retry_in_s=%.0f",
                model_id,
                decision.reason,
                exc.message,
                delay,
            )
            return
        self._backoff.pop(model_id, None)
        self.last[model_id] = ScaleEvent("add", node.name, decision.reason, self.clock())
        log.info(
            "replica model=%s node=%s action=add reason=%s", model_id, node.name, decision.reason
        )
        self._metrics.replicas.labels(model_id).set(len(self._fleet.holders(model_id)))
        self.places_grew(model_id)

    async def _remove(self, node: Node, decision: RetireCopy) -> None:
        model_id = decision.model_id
        # Checked again as the task starts: a request may have been routed here since
        # ``_start``. From here to the unload marking the copy as leaving is no await.
        if node.busy(model_id):
            return
        self.last[model_id] = ScaleEvent("retire", node.name, decision.reason, self.clock())
        log.info(
            "replica model=%s node=%s action=retire reason=%s", model_id, node.name, decision.reason
        )
        try:
            await self._retire(node, model_id)
        except CortexError as exc:
            log.warning(
                "replica model=%s node=%s retire failed: %s", model_id, node.name, exc.message
            )
        self._metrics.replicas.labels(model_id).set(len(self._fleet.holders(model_id)))
