//! Logging: `tracing` with human or JSON lines. One span per HTTP request comes from
//! `tracing_actix_web::TracingLogger`, wrapped around the app by the composition root.

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, LogFormat, LogSettings};

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

/// Installs the global subscriber; `RUST_LOG` overrides `log.level`. A second call (tests)
/// leaves the first subscriber in place.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(directives(&settings.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colours only for a person at a terminal, never into files or container logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _already_installed = match settings.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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
