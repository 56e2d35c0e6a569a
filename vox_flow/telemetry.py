"""The one OpenTelemetry init: a tracer provider and Celery's instrumentation.

Trace context goes from ``submit`` to the worker through opentelemetry-instrumentation-celery
(its publish span is injected into the message headers); vox_flow writes no propagation code.
A real (SDK) tracer provider is installed even when nothing is exported, so every task has a
W3C trace id to show on its handle, result and dead letter.
"""

from __future__ import annotations

import threading

from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from vox_flow.config import Settings

_lock = threading.Lock()
_done = False

tracer = trace.get_tracer("vox_flow")


def _exporter(settings: Settings) -> SpanExporter | None:
    if settings.otel_exporter == "console":
        return ConsoleSpanExporter()
    if settings.otel_exporter == "otlp":
        try:
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
    """Install the tracer provider and instrument Celery (once per process; later calls no-op)."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            provider = TracerProvider()
            exporter = _exporter(settings)
            if exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]


def current_trace_id() -> str | None:
    """The W3C trace id of the current span, as 32 hex digits (None outside any span)."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
