"""Which node serves a request, loading the model first when no node has it.

Loads are single-flight per model: concurrent requests for a cold model wait on
the same load (a bounded number of them) and all see its outcome. Where a load
goes and what is evicted for it are decided by the pure functions of
``placement``; this module carries the decisions out against the neurons.

Every decision and the bookkeeping that protects it (reserved memory, models
marked as leaving, requests counted as active) happen without an ``await`` in
between, so on one event loop two decisions never see the same free memory.
That bookkeeping on ``Node`` is this module's to write; what the neurons answer
goes into the fleet through ``Fleet.record_*``.

Only usable nodes (up, and speaking this gateway's contract) are routed to,
asked for estimates or placed on.

Other gateways may share the fleet, so this one's picture is never the whole truth:
before a cold load it re-reads the eligible nodes' ``/status``; a load of the model
already under way on one of them (another gateway's) is joined there, not started
again; and a node may still refuse a load (507 ``insufficient_memory``: the neuron
arbitrates its own memory) when another gateway took the memory first. Then the
plan is made again from the refused node's fresh state: another node, or eviction
there. A node that refuses twice is given up on for that load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cortex.config import EvictionSection
from cortex.errors import (
    CortexError,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    ModelRecovering,
    ModelTooLarge,
    Overloaded,
    Unavailable,
)
from cortex.gateway.affinity import AffinityTable
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neuron_client import NeuronClient, NeuronUnreachable
from cortex.gateway.placement import (
    LoadPlan,
    Need,
    NoRoom,
    idle_models,
    plan_defrag,
    plan_load,
)
from cortex.gateway.rooms import rooms_of
from cortex.gateway.routing import choose_holder, estimate_cost, overloaded
from cortex.gateway.scaling import ReplicaControl
from cortex.protocol.neuron import EstimateDetail, ModelState
from cortex.protocol.prefix_digest import Chain
from cortex.spec import ModelSpec

log = logging.getLogger("cortex.gateway.scheduler")

Refresh = Callable[[str], Awaitable[None]]

# Refusals a node may give one load before it is given up on: the first may come from
# a picture of it that was stale; a second, from a fresh one, means it is truly full.
REFUSALS_PER_NODE = 2


class Scheduler:
    def __init__(
        self,
        fleet: Fleet,
        catalogue: Catalogue,
        clients: Mapping[str, NeuronClient],
        eviction: EvictionSection,
        metrics: GatewayMetrics,
        refresh: Refresh,
    ) -> None:
        self._fleet = fleet
        self._catalogue = catalogue
        self._clients = clients
        self._eviction = eviction
        self._metrics = metrics
        self._refresh = refresh  # re-reads one node's /status
        self._loads: dict[str, asyncio.Task[Node]] = {}
        self._waiting: dict[str, int] = {}
        self._affinity = AffinityTable()
        self.estimates: dict[str, int] = {}  # MB per model id, known or asked once
        self._estimate_detail: dict[str, EstimateDetail] = {}  # where a neuron gave one
        # MB per device a load takes (main first), by model id: one entry unless the
        # model spans devices (tensor_parallel, a GGUF split)
        self._shares: dict[str, tuple[int, ...]] = {}
        self.eviction_cycles = 0
        self._background: set[asyncio.Task[Any]] = set()
        # Idle-unload times set by clients (Ollama's keep_alive), by model id, in seconds
        # (inf: never); the model's next unload forgets its entry.
        self.keep_alive: dict[str, float] = {}
        # Copies per model (min/max_replicas), run from housekeeping; cold loads stay here.
        self.replicas = ReplicaControl(
            fleet,
            catalogue,
            metrics,
            load_copy=self.load_copy,
            retire=lambda node, model_id: self._unload(node, model_id, reason="scale_down"),
            cold_loading=lambda model_id: model_id in self._loads,
        )

    # -- routing -----------------------------------------------------------------

    def resolve(self, name: str) -> str:
        model_id = self._catalogue.resolve(name, self._fleet.loaded_ids())
        if model_id is None:
            raise ModelNotFound(name, known=self._catalogue.ids(self._fleet.loaded_ids()))
        return model_id

    def holders(self, model_id: str) -> list[Node]:
        """Up nodes where the model is ready now."""
        return self._fleet.holders(model_id)

    async def acquire(
        self,
        model_id: str,
        exclude: frozenset[str] = frozenset(),
        session: str | None = None,
        prefix: Chain | None = None,
        tokens: int = 0,
    ) -> Node:
        """A node to send one request for ``model_id`` to, counted active until ``release``
        (with the same ``tokens``).

        ``session``: a client's explicit session key (pins); ``prefix``: the request's
        chain hashes (``protocol.prefix_digest``), to find the node holding most of it;
        ``tokens``: what it will occupy there (``request_tokens``), spread over copies.
        """
        node = await self._node_for(model_id, exclude, session, prefix)
        # no await since the node was chosen: eviction cannot take the model in between
        node.begin(model_id, tokens)
        if session is not None:
            self._affinity.remember(session, node.name)
        if prefix is not None:
            # a follow-up arriving before the neuron's next poll reports it finds it here
            node.routed_prefix(model_id, prefix.hashes)
        return node

    def request_tokens(self, model_id: str, body: bytes) -> int:
        """A forwarded request's tokens (prompt estimate + max_tokens), capped at the
        model's context: its weight for spreading requests over copies."""
        profile = self._catalogue.profiles.get(model_id)
        if profile is not None:
            context = profile.context_length
        else:
            statuses = (n.models[model_id] for n in self._fleet.holders(model_id))
            context = next((status.context_length for status in statuses), 4096)
        return estimate_cost(body).capped(context)

    def release(self, node: Node, model_id: str, tokens: int = 0) -> None:
        node.end(model_id, tokens)

    async def _node_for(
        self, model_id: str, exclude: frozenset[str], session: str | None, prefix: Chain | None
    ) -> Node:
        holders = [n for n in self._fleet.holders(model_id) if n.name not in exclude]
        if holders:
            pinned = self._affinity.get(session) if session else None
            for node in holders:
                # a session stays on its node unless that node is a batch behind the rest
                if node.name == pinned and not overloaded(node, holders, model_id):
                    return node
            return choose_holder(holders, model_id, prefix)
        self._raise_if_recovering(model_id, exclude)
        profile = self._catalogue.profiles.get(model_id)
        if profile is None:
            raise Unavailable(
                f"The model '{model_id}' is not loaded on any reachable node and has no "
                "profile in models.toml to load it from.",
                retry_after_s=5,
            )
        return await self._wait_for_load(profile, exclude)

    async def _wait_for_load(self, profile: ModelSpec, exclude: frozenset[str]) -> Node:
        waiting = self._waiting.get(profile.id, 0)
        if waiting >= max(1, profile.max_queue):
            raise Overloaded(
                f"{waiting} requests already wait for '{profile.id}' to load; retry shortly.",
                retry_after_s=5,
            )
        task = self._loads.get(profile.id)
        if task is None:
            task = asyncio.create_task(self._load(profile, exclude), name=f"load {profile.id}")
            self._loads[profile.id] = task
            task.add_done_callback(lambda _: self._loads.pop(profile.id, None))
        self._set_waiting(profile.id, waiting + 1)
        try:
            # shield: one waiter giving up must not cancel the load the others wait on
            return await asyncio.shield(task)
        finally:
            self._set_waiting(profile.id, self._waiting.get(profile.id, 1) - 1)

    def _set_waiting(self, model_id: str, count: int) -> None:
        if count > 0:
            self._waiting[model_id] = count
        else:
            self._waiting.pop(model_id, None)
        self._metrics.queue_depth.labels(model_id).set(count)

    def _raise_if_recovering(self, model_id: str, exclude: frozenset[str]) -> None:
        faulted = (ModelState.POISONED, ModelState.RECOVERING)
        for node in self._fleet.usable():
            if node.name not in exclude and node.phase(model_id) in faulted:
                raise ModelRecovering(model_id)

    # -- operator actions ----------------------------------------------------------

    async def warm_pinned(self) -> None:
        """Load every pinned model that no node holds yet (at start-up)."""
        for profile in self._catalogue.profiles.values():
            if profile.pinned and not self._fleet.loaded_on(profile.id):
                try:
                    await self._wait_for_load(profile, frozenset())
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
        if node_name is None:
            holders = self._fleet.holders(model_id)
            if holders:
                return holders[0]
            return await self._wait_for_load(profile, frozenset())
        return await self._load(profile, frozenset(), only=node_name)

    async def unload(self, model_id: str, node_name: str | None = None) -> list[str]:
        names = [node_name] if node_name else self._fleet.loaded_on(model_id)
        if not names or any(model_id not in self._fleet.nodes[n].models for n in names):
            raise ModelNotFound(model_id)
        for name in names:
            await self._unload(self._fleet.nodes[name], model_id, reason=None)
        return names

    async def load_copy(self, profile: ModelSpec, avoid: frozenset[str]) -> Node:
        """Another copy of a model, planned as a cold load away from the nodes in ``avoid``
        (those holding one already)."""
        return await self._load(profile, avoid)

    # -- loading and eviction --------------------------------------------------------

    async def _load(
        self, profile: ModelSpec, exclude: frozenset[str], only: str | None = None
    ) -> Node:
        await self._refresh_eligible(profile, exclude, only)
        joined = await self._found_or_joined(profile, exclude, only)
        if joined is not None:
            return joined
        need = await self._need_mb(profile, exclude, only)
        need_mb = need.total_mb
        failed = set(exclude)
        refused: dict[str, int] = {}
        last_error: CortexError | None = None
        for _ in range(REFUSALS_PER_NODE * len(self._fleet.nodes)):
            plan = self._plan(profile, need, failed, only, last_error)
            node = self._fleet.nodes[plan.node]
            charges = plan.shares or ((plan.device, need_mb),)  # each device its share
            for device, mb in charges:
                node.reserved_mb[device] = node.reserved_mb.get(device, 0) + mb
            node.leaving.update(plan.evict)
            started = time.perf_counter()
            try:
                for victim in plan.evict:
                    await self._unload(node, victim, reason="capacity")
                client = self._clients[node.name]
                # a multi-device plan names its devices, so the neuron loads (and checks)
                # the model where this gateway counted it
                if plan.shares:
                    answer = await client.load(profile, devices=plan.devices)
                else:
                    answer = await client.load(profile)
            except InsufficientMemory as exc:
                # the node's memory went elsewhere (another gateway's load, most likely):
                # plan again from its fresh state, read in ``finally``
                self._metrics.loads.labels(profile.id, node.name, "refused").inc()
                log.warning("load model=%s node=%s refused: %s", profile.id, node.name, exc)
                refused[node.name] = refused.get(node.name, 0) + 1
                if refused[node.name] >= REFUSALS_PER_NODE:
                    failed.add(node.name)
                last_error = exc
                continue
            except NeuronUnreachable as exc:
                # the node went away: try the next best
                self._metrics.loads.labels(profile.id, node.name, "error").inc()
                log.warning("load model=%s node=%s failed: %s", profile.id, node.name, exc)
                self._fleet.mark_down(node.name, exc.message)
                failed.add(node.name)
                last_error = exc
                continue
            except CortexError:
                self._metrics.loads.labels(profile.id, node.name, "error").inc()
                raise
            finally:
                node.leaving.difference_update(plan.evict)
                with contextlib.suppress(CortexError):
                    await self._refresh(node.name)
                for device, mb in charges:
                    node.reserved_mb[device] -= mb
            seconds = time.perf_counter() - started
            self._fleet.record_model(node.name, answer)
            result = "joined" if answer.outcome == "joined" else "ok"
            self._metrics.loads.labels(profile.id, node.name, result).inc()
            self._metrics.load_duration.labels(profile.id, node.name).observe(seconds)
            log.info(
                "loaded model=%s node=%s devices=%s need_mb=%d evicted=%s outcome=%s seconds=%.2f",
                profile.id,
                node.name,
                ",".join(plan.devices),
                need_mb,
                ",".join(plan.evict) or "-",
                answer.outcome,
                seconds,
            )
            if plan.evict:
                self._count_eviction_cycle()
            return node
        raise last_error or Unavailable(f"No node could load '{profile.id}'.", retry_after_s=5)

    async def _refresh_eligible(
        self, profile: ModelSpec, exclude: frozenset[str], only: str | None
    ) -> None:
        """Re-read the nodes a load may use: other gateways may have loaded, started
        loading or unloaded models there since the last poll."""
        names = [node.name for node in self._eligible(profile, exclude, only)]
        await asyncio.gather(*(self._refresh(name) for name in names), return_exceptions=True)

    async def _found_or_joined(
        self, profile: ModelSpec, exclude: frozenset[str], only: str | None
    ) -> Node | None:
        """Where an eligible node already has the model, or is loading it (another
        gateway loaded or started it since this one's last poll): that node, once the
        load there is done (the neuron joins the call to it). None when no node has
        it, or the load there failed for want of memory or the node is gone (then this
        gateway plans a load of its own)."""
        eligible = self._eligible(profile, exclude, only)
        for node in eligible:
            if node.phase(profile.id) is ModelState.READY:
                return node
        for node in eligible:
            if node.phase(profile.id) is not ModelState.LOADING:
                continue
            started = time.perf_counter()
            try:
                answer = await self._clients[node.name].load(profile)
            except InsufficientMemory:
                return None  # the load joined was refused: plan from the fresh state
            except NeuronUnreachable as exc:
                self._fleet.mark_down(node.name, exc.message)
                return None
            except CortexError:
                self._metrics.loads.labels(profile.id, node.name, "error").inc()
                raise  # the load joined failed: so would this one
            self._fleet.record_model(node.name, answer)
            self._metrics.loads.labels(profile.id, node.name, "joined").inc()
            log.info(
                "loaded model=%s node=%s outcome=%s seconds=%.2f",
                profile.id,
                node.name,
                answer.outcome,
                time.perf_counter() - started,
            )
            return node
        return None

    def _plan(
        self,
        profile: ModelSpec,
        need: Need,
        failed: set[str],
        only: str | None,
        last_error: CortexError | None,
    ) -> LoadPlan:
        eligible = [
            node
            for node in self._eligible(profile, failed, only)
            if only is not None or profile.id not in node.models  # one copy per node
        ]
        if not eligible:
            if last_error is not None:
                raise last_error
            where = f" (affinity: {', '.join(profile.nodes)})" if profile.nodes else ""
            # why the nodes are out: what an operator must fix (a wrong token, a host down)
            why = "; ".join(f"{n.name}: {n.error}" for n in self._fleet.nodes.values() if n.error)
            raise Unavailable(
                f"No reachable node may load '{profile.id}'{where}." + (f" {why}" if why else ""),
                retry_after_s=5,
            )
        model_format = self._format_of(profile)
        rooms = rooms_of(eligible, self._catalogue.profiles, model_format)
        if not rooms:
            raise Unavailable(
                f"No eligible node can run '{profile.id}': their GPUs sit next to a CPU-only "
                "llama.cpp build (rebuild it there with CORTEX_GPU=cuda scripts/setup.sh).",
                retry_after_s=30,
            )
        answer = plan_load(rooms, need, self._eviction.strategy)
        if isinstance(answer, NoRoom):
            raise self._no_room_error(profile, answer)
        return answer

    def _eligible(
        self, profile: ModelSpec, excluded: set[str] | frozenset[str], only: str | None
    ) -> list[Node]:
        """Usable nodes the profile's affinity allows, minus ``excluded``, or just ``only``."""
        return [
            node
            for node in self._fleet.usable()
            if node.name not in excluded
            and (only is None or node.name == only)
            and (not profile.nodes or node.name in profile.nodes)
        ]

    def _format_of(self, profile: ModelSpec) -> str | None:
        """The model's file format, as a neuron's estimate read it, else by its name."""
        known = self._estimate_detail.get(profile.id)
        if known is not None:
            return known.format
        return "gguf" if profile.source.lower().endswith(".gguf") else None

    def _no_room_error(self, profile: ModelSpec, answer: NoRoom) -> CortexError:
        where = f" on {answer.largest_slot_node}" if answer.largest_slot_node else ""
        known = self._estimate_detail.get(profile.id)
        detail = (
            f" (weights {known.weights_mb} MB, KV cache {known.kv_cache_mb} MB, "
            f"overhead {known.overhead_mb} MB)"
            if known
            else ""
        )
        if answer.detail:  # a model over several devices: why no node's devices take it
            detail += f"; {answer.detail}"
        if answer.transient:
            return Unavailable(
                f"The model '{profile.id}' needs about {answer.need_mb} MB{detail}; that much "
                "frees up only when requests in flight on other models finish. Retry shortly.",
                code="no_memory_now",
                retry_after_s=10,
            )
        return ModelTooLarge(
            f"The model '{profile.id}' needs about {answer.need_mb} MB{detail}, but the "
            f"largest slot any eligible node can free is {answer.largest_slot_mb} MB{where} "
            "(pinned models stay). Lower its context_length or max_batch, or add memory."
        )

    async def _need_mb(self, profile: ModelSpec, exclude: frozenset[str], only: str | None) -> Need:
        """The profile's memory estimate in MB per device it takes (one unless it spans
        several), read from the model's files once by a neuron."""
        if profile.memory_mb is not None:
            self.estimates.setdefault(profile.id, profile.memory_mb)
            part = -(-profile.memory_mb // profile.width)  # memory_mb is the whole model
            return Need((part,) * profile.width)
        known = self.estimates.get(profile.id)
        if known is not None:
            return Need(self._shares.get(profile.id, (known,)))
        askable = self._eligible(profile, exclude, only)
        last_error: CortexError | None = None
        for node in sorted(askable, key=Node.load):
            try:
                answer = await self._clients[node.name].estimate(profile)
            except NeuronUnreachable as exc:
                last_error = exc
                continue
            self.estimates[profile.id] = answer.memory_mb
            self._estimate_detail[profile.id] = answer.estimate
            # a neuron older than 1.4 gives no shares: the whole on each of its devices
            shares = tuple(answer.shares_mb) or (answer.memory_mb,) * profile.width
            self._shares[profile.id] = shares
            log.info(
                "estimate model=%s memory_mb=%d shares_mb=%s",
                profile.id,
                answer.memory_mb,
                ",".join(map(str, shares)),
            )
            return Need(shares)
        raise last_error or Unavailable(
            f"No reachable node may load '{profile.id}'.", retry_after_s=5
        )

    async def _unload(self, node: Node, model_id: str, reason: str | None) -> None:
        node.leaving.add(model_id)
        try:
            await self._clients[node.name].unload(model_id)
        except ModelNotFound:
            pass  # already gone: the goal is reached
        finally:
            node.leaving.discard(model_id)
        self._fleet.record_unloaded(node.name, model_id)
        if reason is not None:
            self._metrics.evictions.labels(model_id, node.name, reason).inc()
        log.info("unloaded model=%s node=%s reason=%s", model_id, node.name, reason or "operator")

    # -- housekeeping: idle unloads and defrag ---------------------------------------

    def keep_alive_for(self, model_id: str, seconds: float | None) -> None:
        """How long ``model_id`` stays loaded once idle, as a client asked (``None``: as
        cortex.toml says); pinned models stay loaded whatever is asked."""
        if seconds is None:
            self.keep_alive.pop(model_id, None)
        else:
            self.keep_alive[model_id] = seconds

    async def run_housekeeping(self) -> None:
        """Unload models idle past ``idle_unload_after_s`` or their client's keep-alive,
        and add or retire copies (``scaling``); runs for the gateway's life."""
        while True:
            interval = self._housekeeping_interval()
            if self.replicas.configured():
                interval = min(interval, 1.0)  # a deep queue is measured in seconds
            await asyncio.sleep(interval)
            self.replicas.step()  # starts its loads and unloads in the background
            try:
                await self.unload_idle()
            except CortexError as exc:
                log.warning("idle unload failed: %s", exc.message)

    def _housekeeping_interval(self) -> float:
        """A quarter of the shortest idle time in force (0.2 s to 10 s); with none, check
        each second whether a client has set one."""
        times = [self._eviction.idle_unload_after_s or math.inf, *self.keep_alive.values()]
        shortest = min(times)
        return 1.0 if shortest == math.inf else min(10.0, max(0.2, shortest / 4))

    async def unload_idle(self) -> None:
        found = idle_models(
            rooms_of(self._fleet.usable(), self._catalogue.profiles),
            time.time(),
            self._eviction.idle_unload_after_s,
            self.keep_alive,
        )
        for idle in found:
            node = self._fleet.nodes[idle.node]
            if node.busy(idle.model_id):  # a request arrived while an earlier unload ran
                continue
            profile = self._catalogue.profiles.get(idle.model_id)
            copies = len(self._fleet.holders(idle.model_id))
            if profile and profile.min_replicas > 1 and copies <= profile.min_replicas:
                continue  # min_replicas > 1 keeps its copies warm, as pinned keeps one
            log.info("idle model=%s node=%s idle_s=%.0f", idle.model_id, idle.node, idle.idle_s)
            await self._unload(node, idle.model_id, reason="idle")
            if not self._fleet.holders(idle.model_id):
                self.keep_alive.pop(idle.model_id, None)

    def _count_eviction_cycle(self) -> None:
        self.eviction_cycles += 1
        every = self._eviction.defrag_after_cycles
        if every and self.eviction_cycles % every == 0:
            task = asyncio.create_task(self.defrag(), name="defrag")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def defrag(self) -> int:
        """Re-pack idle models so one device's memory is free in one piece; returns moves done."""
        moves = plan_defrag(rooms_of(self._fleet.usable(), self._catalogue.profiles))
        done = 0
        for move in moves:
            profile = self._catalogue.profiles[move.model_id]  # movable means it has one
            try:
                # load first, then unload: the model keeps serving throughout
                await self._load(profile, frozenset(), only=move.target)
                source = self._fleet.nodes[move.source]
                if not source.busy(move.model_id):
                    await self._unload(source, move.model_id, reason="defrag")
                done += 1
            except CortexError as exc:
                log.warning("defrag move %s failed: %s", move, exc.message)
                break
        if moves:
            log.info("defrag moved=%d of %d planned", done, len(moves))
        return done

    async def close(self) -> None:
        await self.replicas.close()
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
