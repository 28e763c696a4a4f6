//! Logging and tracing: `tracing` with human or JSON lines, and every span also an
//! OpenTelemetry span (trace and span ids for W3C propagation, see `chassis::trace`),
//! exported over OTLP/HTTP when `telemetry.otlp_endpoint` is set. One span per HTTP request
//! comes from `tracing_actix_web::TracingLogger`, wrapped around the app by the composition
//! root; port calls, saga steps and event handlers add theirs.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{ConfigError, LogFormat, LogSettings, OtlpProtocol, TelemetrySettings};

/// Checks `log.level` without installing anything.
pub fn validate(settings: &LogSettings) -> Result<(), ConfigError> {
    EnvFilter::try_new(&settings.level)
        .map(|_| ())
        .map_err(|error| ConfigError::key("log.level", error.to_string()))
}

/// `log.level`, and: actix's HTTP/1 dispatcher logs every request it cannot parse (a
/// client's garbage, answered 400) at ERROR, which would page an operator for what is the
/// client's business; it is silenced unless `log.level` names `actix_http` itself.
fn directives(level: &str) -> String {
    if level.contains("actix_http") {
        level.to_owned()
    } else {
        format!("{level},actix_http::h1::dispatcher=off")
    }
}

/// Who this process is, for the spans it exports.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    /// `service.name`: the process's local modules, `catalog+orders+billing+notifications`
    /// for the monolith, `orders` for the orders service.
    pub name: String,
    /// `bazaar.deployment.mode`: `monolith` (every module local) or `split`.
    pub mode: &'static str,
}

/// Keeps the tracer provider alive; dropping it flushes the spans not exported yet.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Flushes the batch; an unreachable collector costs at most its export timeout.
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// The tracer provider that exports spans in batches to `<otlp_endpoint>/v1/traces`.
pub fn tracer_provider(
    endpoint: &url::Url,
    protocol: OtlpProtocol,
    service: &ServiceIdentity,
) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    // The exporter's HTTP client is built right away, on rustls with ring.
    crate::remote::install_tls_provider();
    let resource = Resource::builder()
        .with_service_name(service.name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("bazaar.deployment.mode", service.mode),
        ])
        .build();
    let traces = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
    let protocol = match protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .with_protocol(protocol)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|error| format!("telemetry.otlp_endpoint: {error}"))?;
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// Installs the global subscriber: log lines filtered by `log.level` (`RUST_LOG` wins), and,
/// when `telemetry.otlp_endpoint` is set, every span at INFO or above, whatever the log
/// level, as an OpenTelemetry span exported there — with W3C propagation and trace ids in
/// log lines. Unset, there is no OpenTelemetry layer at all: tracing every span costs
/// 6–8 % of the CPU an order takes (BENCHMARKS.md), which nobody should pay for spans that
/// go nowhere. A second call (tests) leaves the first subscriber in place.
pub fn init(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
    service: &ServiceIdentity,
) -> Result<Telemetry, String> {
    let provider = match &telemetry.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, telemetry.otlp_protocol, service)?),
        None => None,
    };
    install(log, provider.clone());
    Ok(Telemetry { provider })
}

/// [`init`] with a given provider, or none (tests hand it an in-memory exporter).
pub fn install(log: &LogSettings, provider: Option<SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(directives(&log.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colours only for a person at a terminal, never into files or container logs.
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt = match log.format {
        LogFormat::Human => fmt
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format().with_ansi(ansi),
                json: false,
            })
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format().json().flatten_event(true),
                json: true,
            })
            .with_filter(filter)
            .boxed(),
    };
    let spans = provider.map(|provider| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("bazaar"))
            .with_filter(LevelFilter::INFO)
    });
    let _already_installed = tracing_subscriber::registry()
        .with(fmt)
        .with(spans)
        .try_init();
}

/// Log lines with the current span's `trace_id` and `span_id`, so that a line can be found
/// from a trace and a trace from a line: JSON lines get two more fields, human lines end
/// with `trace_id=… span_id=…`. Lines outside any span are left as they are.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        let context = tracing::Span::current().context();
        let span = context.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let (trace_id, span_id) = (ids.trace_id(), ids.span_id());
        match (self.json, line.strip_prefix('{')) {
            (true, Some(rest)) => {
                write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                )
            }
            _ => {
                let body = line.strip_suffix('\n').unwrap_or(&line);
                writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_parse_errors_are_not_logged_unless_asked_for() {
        let quiet = directives("info,catalog=debug");
        assert!(quiet.ends_with("actix_http::h1::dispatcher=off"), "{quiet}");
        assert!(EnvFilter::try_new(&quiet).is_ok());
        assert_eq!(directives("info,actix_http=debug"), "info,actix_http=debug");
    }
}
