"""Tracing and metrics shared by the services.

One trace per session: the gateway opens a ``session`` span when a session starts; its context
travels in gRPC metadata (W3C traceparent) to the renderer and from there to the orchestrator, and
each service records one span per chunk under it, with the chunk index as an attribute.
Prometheus metrics: per-chunk latency per service and stage, and the real-time factor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

CHUNK_SECONDS = Histogram(
    "streamchar_chunk_seconds", "Wall time spent on one chunk", ["service", "stage"],
    buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.12, 0.16, 0.24, 0.32, 0.5, 1.0, 2.0, 5.0))
CHUNK_RTF = Histogram(
    "streamchar_chunk_realtime_factor", "Chunk playback duration / wall time to produce it (>1 = faster than real time)",
    ["service"], buckets=(0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32))
SESSIONS = Counter("streamchar_sessions_total", "Sessions started", ["service"])
ERRORS = Counter("streamchar_errors_total", "Requests that ended with an error status", ["service", "code"])


def setup_tracing(service_name: str, otlp_endpoint: str = "", exporters: Sequence[SpanExporter] = ()) -> None:
    """Install the process's tracer provider (once per process; later calls only add exporters)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        trace.set_tracer_provider(provider)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
        log.info("exporting traces over OTLP to %s", otlp_endpoint)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))


def tracer(service: str) -> trace.Tracer:
    return trace.get_tracer(f"streamchar.{service}")


def start_metrics(port: int) -> None:
    if port:
        start_http_server(port)
        log.info("Prometheus metrics on :%d/metrics", port)


def outgoing_metadata(ctx: otel_context.Context | None = None) -> list[tuple[str, str]]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return list(carrier.items())


def incoming_context(metadata: Sequence[tuple[str, str | bytes]] | None) -> otel_context.Context:
    carrier = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
    return propagate.extract(carrier)


def record_chunk(service: str, stage: str, seconds: float, playback_seconds: float | None = None) -> None:
    CHUNK_SECONDS.labels(service, stage).observe(seconds)
    if playback_seconds is not None and seconds > 0:
        CHUNK_RTF.labels(service).observe(playback_seconds / seconds)
