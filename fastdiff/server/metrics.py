"""Prometheus metrics of one app (its own registry, so several apps can live in one process).
Request-side metrics are observed by the routes; the engine's queue and batch figures are read
from AsyncEngine.stats() at scrape time (behind the Ray Serve ingress: summed over the live
engine replicas)."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _EngineCollector:
    """Queue depth, running batch size, the batch-size and queue-wait histograms and the
    engine's request outcomes, from stats()."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        self.stats = stats

    def collect(self):
        s = self.stats()
        yield GaugeMetricFamily("fastdiff_queue_depth", "Requests waiting for a run",
                                value=s.get("queue_depth", 0))
        yield GaugeMetricFamily("fastdiff_running_batch_size", "Rows in the running batch",
                                value=s.get("running_batch_size", 0))
        sizes = {int(k): v for k, v in s.get("batch_sizes", {}).items()}
        buckets = [(str(float(b)), sum(v for k, v in sizes.items() if k <= b))
                   for b in BATCH_BUCKETS]
        buckets.append(("+Inf", sum(sizes.values())))
        yield HistogramMetricFamily("fastdiff_batch_size", "Rows per denoising run",
                                    buckets=buckets,
                                    sum_value=sum(k * v for k, v in sizes.items()))
        wait = s.get("queue_wait_s")
        if wait:
            yield HistogramMetricFamily(
                "fastdiff_queue_wait_seconds", "Time from submission to the start of the "
                "request's run (requests join only when a run starts)",
                buckets=[("+Inf" if b == float("inf") else str(float(b)), n)
                         for b, n in wait["buckets"].items()], sum_value=wait["sum"])
        c = CounterMetricFamily("fastdiff_engine_requests", "Requests by engine outcome",
                                labels=["outcome"])
        for outcome in ("submitted", "completed", "failed", "cancelled", "rejected"):
            c.add_metric([outcome], s.get(f"requests_{outcome}", 0))
        yield c
        if "replicas" in s:  # a Ray Serve ingress: the figures above summed over replicas
            yield GaugeMetricFamily("fastdiff_replicas", "Live engine replicas",
                                    value=s["replicas"])
            yield CounterMetricFamily("fastdiff_replica_retries", "Requests resent to another "
                                      "engine replica after theirs died",
                                      value=s.get("replica_retries", 0))


class Metrics:
    def __init__(self, stats: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fastdiff_requests", "HTTP requests by endpoint and status "
                                "(status 'cancelled': the client left a stream)",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("fastdiff_request_latency_seconds", "End-to-end request "
                                 "latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("fastdiff_time_to_first_token_seconds", "Time to the first "
                              "streamed text", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("fastdiff_prompt_tokens", "Prompt tokens of finished "
                                     "requests", registry=r)
        self.generated_tokens = Counter("fastdiff_generated_tokens", "Completion tokens of "
                                        "finished requests", registry=r)
        self.nfe = Counter("fastdiff_nfe", "Forward evaluations of finished requests' rows",
                           registry=r)
        r.register(_EngineCollector(stats))

    def finished(self, endpoint: str, status: str, seconds: float) -> None:
        self.requests.labels(endpoint, status).inc()
        self.latency.labels(endpoint).observe(seconds)

    def usage(self, usage: dict) -> None:
        self.prompt_tokens.inc(usage.get("prompt_tokens", 0))
        self.generated_tokens.inc(usage.get("completion_tokens", 0))
        self.nfe.inc(usage.get("nfe", 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
