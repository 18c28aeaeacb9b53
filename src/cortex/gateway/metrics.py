"""The gateway's Prometheus metrics (names are a contract: README.md, "Watching and healing")."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# LLM latencies span milliseconds (TTFT on a warm small model) to minutes (long generations).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
_RATE_BUCKETS = (1, 5, 10, 20, 40, 80, 160, 320, 640, 1280)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cortex_requests",
            "Requests served",
            ["model", "node", "dialect", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "cortex_request_duration_seconds",
            "Whole request latency",
            ["model", "node"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "cortex_time_to_first_token_seconds",
            "Time to the first streamed token",
            ["model", "node"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.output_rate = Histogram(
            "cortex_output_tokens_per_second",
            "Completion tokens per second of generation",
            ["model", "node"],
            buckets=_RATE_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "cortex_prompt_tokens", "Prompt tokens", ["model", "node"], registry=registry
        )
        self.completion_tokens = Counter(
            "cortex_completion_tokens", "Completion tokens", ["model", "node"], registry=registry
        )
        self.overhead = Histogram(
            "cortex_gateway_overhead_seconds",
            "Time the gateway itself adds to a request",
            buckets=_OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.loads = Counter(
            "cortex_model_loads", "Model loads", ["model", "node", "result"], registry=registry
        )
        self.load_duration = Histogram(
            "cortex_model_load_duration_seconds",
            "Model load time",
            ["model", "node"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.evictions = Counter(
            "cortex_model_evictions",
            "Models evicted",
            ["model", "node", "reason"],
            registry=registry,
        )
        self.node_up = Gauge(
            "cortex_node_up", "1 when the node answers", ["node"], registry=registry
        )
        self.node_memory_free = Gauge(
            "cortex_node_memory_free_bytes",
            "Free memory per device",
            ["node", "device"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "cortex_queue_depth", "Requests waiting for a model", ["model"], registry=registry
        )
        self.replicas = Gauge(
            "cortex_model_replicas",
            "Ready copies of a model across the fleet",
            ["model"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "cortex_rate_limited_total",
            "Requests refused for a key's limit (rpm, tpm, parallel) or budget",
            ["key_id", "reason"],
            registry=registry,
        )
