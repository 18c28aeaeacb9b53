"""The neuron's Prometheus metrics (names are a contract: README.md, "Watching and healing")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cortex.protocol.neuron import ModelState

# LLM latencies span milliseconds (a warm small model) to minutes (a long prefill).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class NeuronMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "neuron_requests",
            "Generation requests by how they ended (stop, length, cancelled, error)",
            ["model", "finish"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "neuron_time_to_first_token_seconds",
            "From the request's arrival to its first generated token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "neuron_batch_size",
            "Sequences decoded together, per decode step",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "neuron_generated_tokens", "Tokens generated", ["model"], registry=self.registry
        )
        self.prefix_cache_hits = Counter(
            "neuron_prefix_cache_hit_tokens",
            "Prompt tokens whose KV was reused from an earlier request",
            ["model"],
            registry=self.registry,
        )
        self.draft_tokens = Counter(
            "neuron_speculative_draft_tokens",
            "Tokens drafted by speculative decoding, by whether the model kept them",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.recoveries = Counter(
            "neuron_recoveries",
            "Automatic reloads of a faulted model, by result (ok or failed)",
            ["model", "result"],
            registry=self.registry,
        )

        self.engine_faults = Counter(
            "neuron_engine_faults",
            "Engine processes lost, by kind (crash, killed, hang, device_error, ...)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.model_loads = Counter(
            "neuron_model_loads",
            "Loads this node ran, by result: ok, failed, or refused (no memory left for it)",
            ["model", "result"],
            registry=self.registry,
        )
        self.load_joins = Counter(
            "neuron_model_load_joins",
            "Load calls that joined a load of the same model already under way",
            ["model"],
            registry=self.registry,
        )
        self.engine_restarts = Counter(
            "neuron_engine_restarts",
            "Engine processes started again after a fault",
            ["model"],
            registry=self.registry,
        )

    def watch_states(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Export ``neuron_model_state{model,state}`` from ``(model, state)`` pairs read
        at scrape time: 1 for the model's state, 0 for the others."""
        self.registry.register(_StateCollector(states))


class _StateCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "neuron_model_state",
            "1 for the state each loaded model is in",
            labels=["model", "state"],
        )
        for model, current in self._states():
            for state in ModelState:
                family.add_metric([model, state.value], 1.0 if state == current else 0.0)
        yield family
