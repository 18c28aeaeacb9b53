"""The neuron's Prometheus metrics (names are part of the contract, see interfaces.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class NeuronMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.recoveries = Counter(
            "neuron_recoveries",
            "Automatic reloads of a faulted model, by result (ok or failed)",
            ["model", "result"],
            registry=self.registry,
        )
