"""Telemetry: OpenTelemetry tracing across the Kafka hops, span export, Prometheus metrics."""
