"""Prometheus metrics of one process, served on its own HTTP port (0 = off).

Latency histograms use the OpenTelemetry GenAI server metric names in their Prometheus
form (dots -> underscores, unit suffix): ``gen_ai.server.time_to_first_token`` ->
``gen_ai_server_time_to_first_token_seconds`` and likewise for
``gen_ai.server.time_per_output_token`` and ``gen_ai.server.request.duration``; bucket
boundaries are the ones the GenAI conventions advise. Every metric lives in the object's
own registry, so several services in one process (``binbaton up``) share one endpoint.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from binbaton.schemas.settings import PortInUse, non_negative_int, setting
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
TOKEN_ERROR_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

MODEL_LABEL = "gen_ai_request_model"  # gen_ai.request.model, Prometheus-style


@dataclass(frozen=True)
class MetricsConfig:
    """``port`` 0 turns the endpoint off; ``host`` is the address it binds."""

    port: int = field(default=0, metadata=setting(
        "Prometheus metrics on this port (0: off); `up`: the classifier's, and worker i of `up` "
        "takes this port + 1 + i", flag="metrics-port", parse=non_negative_int))
    host: str = field(default="127.0.0.1", metadata=setting(
        "address the Prometheus endpoint binds (0.0.0.0: every interface)",
        flag="metrics-host"))

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"metrics port must be 0 (off) … 65535, got {self.port}")
        if not self.host:
            raise ValueError("metrics host must not be empty")


def _ms_to_s(later: int | None, earlier: int | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier) / 1000.0)


class Metrics:
    """The service's metrics. The classifier and the workers call the small ``observe_*`` /
    ``set_*`` methods; ``serve`` starts the endpoint."""

    def __init__(self, model: str = "", registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry or CollectorRegistry()
        self._server: Any = None
        r = self.registry
        self.requests = Counter(
            "binbaton_requests", "Requests by the stage that handled them and their status.",
            ["stage", "status"], registry=r)
        self.errors = Counter(
            "binbaton_request_errors", "Failed requests by stage and error code.",
            ["stage", "code"], registry=r)
        self.routed = Counter(
            "binbaton_routed_requests", "Requests the classifier routed, by bin.",
            ["bin"], registry=r)
        self.queue_depth = Gauge(
            "binbaton_queue_depth", "Requests taken from a bin and not yet finished.",
            ["bin"], registry=r)
        self.consumer_lag = Gauge(
            "binbaton_consumer_lag", "Messages behind the end of a partition (high watermark "
            "minus position).", ["topic", "partition"], registry=r)
        self.batch_occupancy = Gauge(
            "binbaton_batch_occupancy_ratio", "Running sequences over the batch capacity.",
            ["bin"], registry=r)
        self.batch_running = Gauge(
            "binbaton_batch_running", "Sequences in the running decode batch.",
            ["bin"], registry=r)
        self.output_tokens = Counter(
            "binbaton_output_tokens", "Generated tokens (rate() gives tokens/s).",
            ["bin"], registry=r)
        self.input_tokens = Counter(
            "binbaton_input_tokens", "Prompt tokens of served requests.", ["bin"], registry=r)
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai.server.time_to_first_token: from the classifier receiving the request to "
            "its first token, successful requests.", [MODEL_LABEL, "bin"],
            buckets=TTFT_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "gen_ai.server.time_per_output_token: time per token after the first, "
            "successful requests.", [MODEL_LABEL, "bin"], buckets=TPOT_BUCKETS, registry=r)
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "gen_ai.server.request.duration: from receiving the request to its last token.",
            [MODEL_LABEL, "bin", "status"], buckets=DURATION_BUCKETS, registry=r)
        self.predictor_error = Histogram(
            "binbaton_predictor_error_tokens",
            "|predicted - actual| output length in tokens.", ["bin"],
            buckets=TOKEN_ERROR_BUCKETS, registry=r)

    # -- endpoint ----------------------------------------------------------------------

    def serve(self, config: MetricsConfig) -> int | None:
        """Start the HTTP endpoint (a daemon thread) unless the port is 0; returns the port."""
        if config.port == 0:
            return None
        try:
            self._server, _thread = start_http_server(config.port, addr=config.host,
                                                      registry=self.registry)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(f"metrics port {config.port} on {config.host} is in use: give "
                            "another --metrics-port (0: off)") from exc
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- classifier ----------------------------------------------------------------------

    def observe_routed(self, bin_index: int) -> None:
        """The classifier routed a request to a bin."""
        self.requests.labels("classifier", "ok").inc()
        self.routed.labels(_bin(bin_index)).inc()

    def observe_rejected(self, stage: str, code: str) -> None:
        """A request could not be served (an error Result and a DeadLetter were sent)."""
        self.requests.labels(stage, "error").inc()
        self.errors.labels(stage, code).inc()

    def observe_prediction(self, predicted: int, actual: int, bin_index: int | None) -> None:
        self.predictor_error.labels(_bin(bin_index)).observe(abs(predicted - actual))

    # -- worker ----------------------------------------------------------------------------

    def observe_result(self, result: Any, stage: str = "worker") -> None:
        """One finished request (a ``Result``): status, tokens, TTFT, TPOT, duration and the
        predictor's error. Call once per result sent."""
        bin_label = _bin(result.bin)
        self.requests.labels(stage, result.status).inc()
        timings = result.timings
        duration = _ms_to_s(timings.finished, timings.received)
        if duration is not None:
            self.request_duration.labels(self.model, bin_label, result.status).observe(duration)
        if result.status != "ok":
            self.errors.labels(stage, result.error.code if result.error else "unknown").inc()
            return
        completion = result.usage.completion_tokens
        self.output_tokens.labels(bin_label).inc(completion)
        self.input_tokens.labels(bin_label).inc(result.usage.prompt_tokens)
        ttft = _ms_to_s(timings.first_token, timings.received)
        if ttft is not None:
            self.time_to_first_token.labels(self.model, bin_label).observe(ttft)
        decode = _ms_to_s(timings.finished, timings.first_token)
        if decode is not None and completion > 1:
            self.time_per_output_token.labels(self.model, bin_label).observe(
                decode / (completion - 1))
        if result.predicted_tokens is not None:
            self.observe_prediction(result.predicted_tokens, completion, result.bin)

    def set_queue_depth(self, bin_index: int, depth: int) -> None:
        self.queue_depth.labels(_bin(bin_index)).set(depth)

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic, str(partition)).set(max(0, lag))

    def set_batch(self, running: int, capacity: int, bin_index: int | None = None) -> None:
        """The engine's running batch: ``running`` sequences of at most ``capacity``."""
        label = _bin(bin_index)
        self.batch_running.labels(label).set(running)
        self.batch_occupancy.labels(label).set(running / capacity if capacity else 0.0)


def _bin(bin_index: int | None) -> str:
    return "all" if bin_index is None else str(bin_index)


async def update_consumer_lag(metrics: Metrics, consumer: Any) -> None:
    """Set the lag gauge of every partition assigned to an aiokafka consumer."""
    partitions = list(consumer.assignment())
    if not partitions:
        return
    ends = await consumer.end_offsets(partitions)
    for tp in partitions:
        position = await consumer.position(tp)
        metrics.set_consumer_lag(tp.topic, tp.partition, ends[tp] - position)
