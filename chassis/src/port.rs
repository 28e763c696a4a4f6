//! One port call, observed the same way wherever the module runs (spec §7): a span named
//! `<module>.<operation>` — so that an order's trace has the same shape in the monolith and
//! in the split — and the latency in `bazaar_port_call_duration_seconds{module, operation,
//! mode, outcome}`. Each contract crate wraps its port with it (`observed`), and the
//! composition root hands out only wrapped ports.

use std::future::Future;
use std::time::Instant;

use tracing::Instrument as _;

/// Where the module behind a port runs, for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Local,
    Remote,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }
}

/// Runs `call` inside the port call's span and records its latency and outcome (`ok` or
/// `error`).
pub async fn observe<T, E>(
    module: &'static str,
    operation: &'static str,
    mode: Mode,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let span = tracing::info_span!(
        "port call",
        otel.name = %format_args!("{module}.{operation}"),
        otel.kind = if mode == Mode::Remote { "client" } else { "internal" },
        bazaar.module = module,
        bazaar.operation = operation,
        bazaar.mode = mode.as_str(),
    );
    let started = Instant::now();
    let outcome = call.instrument(span).await;
    metrics::histogram!(
        "bazaar_port_call_duration_seconds",
        "module" => module,
        "operation" => operation,
        "mode" => mode.as_str(),
        "outcome" => if outcome.is_ok() { "ok" } else { "error" },
    )
    .record(started.elapsed().as_secs_f64());
    outcome
}
