//! W3C trace context across processes (spec §7): what a remote call sends, what an event
//! envelope records when it is written, and how the handler of that event continues it.
//! Spans are `tracing` spans; the OpenTelemetry layer that `telemetry::init` installs gives
//! them trace and span ids. Without that layer there is no context, and nothing is sent.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether `span` belongs to an OpenTelemetry trace (false without the layer that
/// `telemetry::init` installs when spans have somewhere to go).
pub fn is_traced(span: &tracing::Span) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    !span.is_disabled() && span.context().span().span_context().is_valid()
}

/// `span`'s context as `traceparent` (and `tracestate`), for an envelope.
pub fn context_of(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.into_iter().collect()
}

/// Adds the current span's context to the headers of an outgoing request.
pub fn inject_current(headers: &mut reqwest::header::HeaderMap) {
    TraceContextPropagator::new().inject_context(
        &tracing::Span::current().context(),
        &mut opentelemetry_http::HeaderInjector(headers),
    );
}

/// Makes `span` a child of the context in `carrier` (an envelope's `trace_context`, say);
/// an empty or malformed carrier leaves it a root.
pub fn continue_from(span: &tracing::Span, carrier: &BTreeMap<String, String>) {
    if carrier.is_empty() {
        return;
    }
    let carrier: HashMap<String, String> = carrier.clone().into_iter().collect();
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Fails only when no OpenTelemetry layer is installed: then there is no trace to join.
    let _ = span.set_parent(parent);
}
