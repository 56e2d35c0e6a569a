"""The one OpenTelemetry init, called by entry points only: a tracer provider and Celery's
instrumentation.

Entry points (a worker process, beat, the control service) call :func:`init`; importing
vox_flow never changes OpenTelemetry's global state, so an application that imports its task
modules keeps its own tracer provider. Trace context goes from ``submit`` to the worker in
the message headers (OpenTelemetry's propagator; the worker's Celery instrumentation
extracts it). A client process without an SDK tracer provider of its own still gets a W3C
trace id on every handle: :func:`tracer` then falls back to a private provider that records
into nothing and is never installed globally.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

if TYPE_CHECKING:
    from vox_flow.config import Settings

_lock = threading.Lock()
_done = False
_private: TracerProvider | None = None
_cached: tuple[object, trace.Tracer] | None = None  # (global provider, its tracer)


def _exporter(settings: Settings) -> SpanExporter | None:
    if settings.otel_exporter == "console":
        return ConsoleSpanExporter()
    if settings.otel_exporter == "otlp":
        try:
            # Lazy: an optional extra, needed only when this exporter is chosen.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise RuntimeError(
                "VOX_FLOW_OTEL_EXPORTER=otlp needs the otlp extra: pip install 'vox_flow[otlp]'"
            ) from exc
        exporter: SpanExporter = OTLPSpanExporter(endpoint=settings.otel_endpoint)
        return exporter
    return None


def init(settings: Settings) -> None:
    """Install the tracer provider (unless the process has an SDK one) and instrument Celery.

    Once per process; later calls do nothing. Only entry points call this.
    """
    global _done
    with _lock:
        if _done:
            return
        _done = True
        # Lazy: the instrumentation loads Celery's signal machinery; clients never need it.
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            provider = TracerProvider()
            exporter = _exporter(settings)
            if exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]


def tracer() -> trace.Tracer:
    """vox_flow's tracer: from the process's SDK provider if it has one, else from a private
    provider (spans with real ids, exported nowhere)."""
    global _private, _cached
    provider = trace.get_tracer_provider()
    cached = _cached
    if cached is not None and cached[0] is provider:
        return cached[1]  # the hot path (every submit): no new Tracer object
    with _lock:
        if isinstance(provider, TracerProvider):
            found = provider.get_tracer("vox_flow")
        else:
            if _private is None:
                _private = TracerProvider()
            found = _private.get_tracer("vox_flow")
        _cached = (provider, found)
    return found


def current_trace_id() -> str | None:
    """The W3C trace id of the current span, as 32 hex digits (None outside any span)."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
