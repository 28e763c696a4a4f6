//! Layered configuration: built-in defaults < a TOML file < `BAZAAR__…` environment
//! variables (`BAZAAR__ORDERS__SYNC_WAIT=3s` sets `orders.sync_wait`).
//!
//! The chassis loads any `Deserialize` type and owns the platform sections; the binary
//! composes them with each module's own section into the one typed config that is read
//! once at start-up and handed down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::secret::Secret;

/// Start-up stops with this; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("invalid config: {key}: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The environment variable prefix: `BAZAAR__SERVER__BIND`.
pub const ENV_PREFIX: &str = "BAZAAR";

/// Loads `T` from defaults (its `serde(default)`s), the file if given, and the process
/// environment.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    load_with_env(file, None)
}

/// Like [`load`], with the environment given as a map (tests), or the process's if `None`.
pub fn load_with_env<T: DeserializeOwned>(
    file: Option<&Path>,
    env: Option<HashMap<String, String>>,
) -> Result<T, ConfigError> {
    let mut builder = ::config::Config::builder();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.to_owned(),
                message: "no such file".into(),
            });
        }
        builder = builder.add_source(::config::File::from(path).format(::config::FileFormat::Toml));
    }
    builder = builder.add_source(
        ::config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(env),
    );
    let raw = builder.build().map_err(|error| match file {
        Some(path) => ConfigError::File {
            path: path.to_owned(),
            message: error.to_string(),
        },
        None => ConfigError::Invalid(error.to_string()),
    })?;
    raw.try_deserialize::<T>()
        .map_err(|error| ConfigError::Invalid(error.to_string()))
}

/// `server`: where the HTTP API listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on, e.g. `127.0.0.1:8080` or `0.0.0.0:8080`.
    pub bind: String,
    /// How long in-flight requests may take to finish after SIGTERM / Ctrl-C.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: std::time::Duration,
    /// HTTP worker threads; unset: one per core.
    pub workers: Option<usize>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            shutdown_timeout: std::time::Duration::from_secs(30),
            workers: None,
        }
    }
}

impl ServerSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bind
            .parse::<std::net::SocketAddr>()
            .map(|_| ())
            .map_err(|_| {
                ConfigError::key(
                    "server.bind",
                    format!("{:?} is not an address like 127.0.0.1:8080", self.bind),
                )
            })?;
        if self.workers == Some(0) {
            return Err(ConfigError::key("server.workers", "must be at least 1"));
        }
        Ok(())
    }
}

/// `shop`: facts about the shop every module shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShopSettings {
    /// The one currency prices and payments are in (ISO 4217).
    pub currency: String,
}

impl Default for ShopSettings {
    fn default() -> Self {
        Self {
            currency: "EUR".into(),
        }
    }
}

impl ShopSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let valid =
            self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase());
        if valid {
            Ok(())
        } else {
            Err(ConfigError::key(
                "shop.currency",
                format!("{:?} is not a currency code like EUR", self.currency),
            ))
        }
    }
}

/// `auth`: bearer tokens. Unset: the endpoints that need them answer 401.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Token for `[admin]` endpoints.
    pub admin_token: Option<Secret>,
    /// Token for `/internal/*` endpoints, and sent by this process's remote clients.
    pub service_token: Option<Secret>,
}

impl AuthSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, token) in [
            ("auth.admin_token", &self.admin_token),
            ("auth.service_token", &self.service_token),
        ] {
            if token
                .as_ref()
                .is_some_and(|token| token.expose().trim().is_empty())
            {
                return Err(ConfigError::key(
                    key,
                    "must not be empty; leave it unset to disable",
                ));
            }
        }
        Ok(())
    }
}

/// `telemetry`: where spans are exported (spec §7).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// An OTLP/HTTP collector's base URL (`http://collector:4318`): spans go to
    /// `<otlp_endpoint>/v1/traces` in batches. Unset: no export.
    pub otlp_endpoint: Option<Url>,
    /// `http/protobuf` (OTLP's default) or `http/json`.
    pub otlp_protocol: OtlpProtocol,
}

/// How spans are encoded for the collector, named as `OTEL_EXPORTER_OTLP_PROTOCOL` names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

impl TelemetrySettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.otlp_endpoint {
            Some(url) if !matches!(url.scheme(), "http" | "https") => Err(ConfigError::key(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL (OTLP over HTTP, e.g. http://collector:4318)",
            )),
            _ => Ok(()),
        }
    }
}

/// `log`: human or JSON lines, and a `tracing` filter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,catalog=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

/// `database`: what one process may ask of PostgreSQL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The most PostgreSQL connections one process opens, all its local modules' pools
    /// together. The default lets four instances share a PostgreSQL server left at its
    /// default `max_connections = 100`, with room for administrators.
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            max_connections: 20,
        }
    }
}

/// `bus`: how events travel between modules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    pub kind: BusKind,
    /// The broker's URL, for `nats` and `rabbitmq`; printed with its credentials redacted.
    pub url: Option<crate::secret::SecretUrl>,
    /// NATS: the JetStream stream that holds every event.
    pub stream: String,
    /// NATS: partitions of the stream; a key's events stay in one, in order. Fixed per
    /// deployment: changing it moves keys between partitions, so do it on an empty stream.
    pub partitions: u16,
    /// NATS: how long the stream keeps an event.
    #[serde(with = "humantime_serde")]
    pub max_age: std::time::Duration,
    /// NATS: how long JetStream remembers an event id to drop a copy published again.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: std::time::Duration,
    /// NATS: how long a delivered event stays with its instance without news before
    /// JetStream gives it to another (an instance at work on it renews this). Also how
    /// long the events in flight when a broker crashed wait before they come again.
    #[serde(with = "humantime_serde")]
    pub ack_wait: std::time::Duration,
    /// NATS: how long to wait for the connection and for each publish ack.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: std::time::Duration,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            kind: BusKind::default(),
            url: None,
            stream: "BAZAAR_EVENTS".into(),
            partitions: 64,
            max_age: std::time::Duration::from_secs(7 * 24 * 3600),
            duplicate_window: std::time::Duration::from_secs(120),
            ack_wait: std::time::Duration::from_secs(10),
            publish_timeout: std::time::Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    #[default]
    InProcess,
    Nats,
    Rabbitmq,
}

/// What the NATS bus needs, from [`BusSettings`].
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: crate::secret::SecretUrl,
    pub stream: String,
    pub partitions: u16,
    pub max_age: std::time::Duration,
    pub duplicate_window: std::time::Duration,
    pub ack_wait: std::time::Duration,
    pub publish_timeout: std::time::Duration,
    /// Publishes of one batch, the first included, before `publish` gives up.
    pub publish_attempts: u32,
}

impl BusSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.kind {
            BusKind::InProcess => return Ok(()),
            BusKind::Nats | BusKind::Rabbitmq if self.url.is_none() => {
                return Err(ConfigError::key(
                    "bus.url",
                    "required when bus.kind is nats or rabbitmq",
                ));
            }
            BusKind::Nats | BusKind::Rabbitmq => {}
        }
        if self.partitions == 0 {
            return Err(ConfigError::key("bus.partitions", "must be at least 1"));
        }
        if self.stream.is_empty()
            || !self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::key(
                "bus.stream",
                "must be letters, digits, '-' and '_'",
            ));
        }
        if self.ack_wait < std::time::Duration::from_secs(3) {
            return Err(ConfigError::key("bus.ack_wait", "must be at least 3s"));
        }
        Ok(())
    }

    /// The NATS bus's settings, when `kind` is `nats`.
    pub fn nats(&self) -> Option<NatsSettings> {
        match (self.kind, &self.url) {
            (BusKind::Nats, Some(url)) => Some(NatsSettings {
                url: url.clone(),
                stream: self.stream.clone(),
                partitions: self.partitions,
                max_age: self.max_age,
                duplicate_window: self.duplicate_window,
                ack_wait: self.ack_wait,
                publish_timeout: self.publish_timeout,
                publish_attempts: 3,
            }),
            _ => None,
        }
    }
}

/// `events`: the outbox relay and the consumers' retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSettings {
    /// Outbox rows claimed and published at once.
    pub batch_size: u32,
    /// Safety-net poll of the outbox (the relay is woken on commit anyway).
    #[serde(with = "humantime_serde")]
    pub poll_interval: std::time::Duration,
    /// How long sent outbox rows are kept.
    #[serde(with = "humantime_serde")]
    pub retention: std::time::Duration,
    /// Attempts at handling an event, the first included, before it is parked as a dead letter.
    pub max_attempts: u32,
    /// First retry delay; doubles each time, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_delay: std::time::Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: std::time::Duration,
}

impl Default for EventsSettings {
    fn default() -> Self {
        let relay = crate::events::RelaySettings::default();
        let retry = crate::events::RetryPolicy::default();
        Self {
            batch_size: relay.batch_size,
            poll_interval: relay.poll_interval,
            retention: relay.retention,
            max_attempts: retry.max_attempts,
            retry_delay: retry.first_delay,
            max_retry_delay: retry.max_delay,
        }
    }
}

impl EventsSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return Err(ConfigError::key("events.batch_size", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::key(
                "events.max_attempts",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn relay(&self) -> crate::events::RelaySettings {
        crate::events::RelaySettings {
            batch_size: self.batch_size,
            poll_interval: self.poll_interval,
            retention: self.retention,
            ..crate::events::RelaySettings::default()
        }
    }

    pub fn retry(&self) -> crate::events::RetryPolicy {
        crate::events::RetryPolicy {
            max_attempts: self.max_attempts,
            first_delay: self.retry_delay,
            max_delay: self.max_retry_delay,
        }
    }
}

/// `modules.<name>`: where a module runs and where its data lives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModuleSettings {
    /// `local` (compiled in and served here), `remote` (reached over HTTP at `url`) or `off`
    /// (neither: this deployment runs without it). Unset: local when the module is
    /// compiled into this binary, otherwise remote when `url` is set, otherwise absent.
    pub mode: Option<ModuleMode>,
    /// Base URL of the process serving the module, when `mode = "remote"`.
    pub url: Option<Url>,
    /// Unset: the SQLite file `<data_dir>/<name>.db`; `postgres://…`: PostgreSQL.
    pub database_url: Option<DatabaseUrl>,
    /// Connections in the module's database pool.
    pub pool_size: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleMode {
    Local,
    Remote,
    Off,
}

/// Where a module runs in this process, once config and compiled features are combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Local,
    Remote(Url),
    Absent,
}

impl ModuleSettings {
    /// Combines `mode` with whether the module is compiled in; errors name the key.
    pub fn placement(&self, name: &str, compiled_in: bool) -> Result<Placement, ConfigError> {
        match (self.mode, compiled_in) {
            (Some(ModuleMode::Local), false) => Err(ConfigError::key(
                format!("modules.{name}.mode"),
                format!(
                    "\"local\", but this binary was built without the `{name}` feature; set it to \"remote\" with modules.{name}.url, or rebuild with --features {name}"
                ),
            )),
            (Some(ModuleMode::Local), true) | (None, true) => Ok(Placement::Local),
            (Some(ModuleMode::Off), _) => Ok(Placement::Absent),
            (Some(ModuleMode::Remote), _) => match &self.url {
                Some(url) => Ok(Placement::Remote(url.clone())),
                None => Err(ConfigError::key(
                    format!("modules.{name}.url"),
                    format!(
                        "required when modules.{name}.mode = \"remote\" (e.g. http://{name}:8080/)"
                    ),
                )),
            },
            (None, false) => Ok(match &self.url {
                Some(url) => Placement::Remote(url.clone()),
                None => Placement::Absent,
            }),
        }
    }

    /// The database URL the module uses: the configured one, or its SQLite file.
    pub fn database_url_or_default(&self, name: &str, data_dir: &Path) -> DatabaseUrl {
        self.database_url
            .clone()
            .unwrap_or_else(|| DatabaseUrl::sqlite(data_dir.join(format!("{name}.db"))))
    }
}

/// A database URL: `postgres://…` / `postgresql://…`, or a SQLite file (`sqlite://path`
/// or a bare path). Printed with its password redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn sqlite(path: impl AsRef<Path>) -> Self {
        Self(path.as_ref().display().to_string())
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    /// The SQLite file path, for a SQLite URL.
    pub fn sqlite_path(&self) -> Option<&str> {
        if self.is_postgres() {
            None
        } else {
            Some(self.0.strip_prefix("sqlite://").unwrap_or(&self.0))
        }
    }

    /// The URL itself, password included; only for opening connections.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced, for logs and `bazaar config`.
    pub fn redacted(&self) -> String {
        crate::secret::redact_password(&self.0)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        DatabaseUrl::parse(raw).map_err(serde::de::Error::custom)
    }
}

impl DatabaseUrl {
    /// A configured database URL: `postgres://` / `postgresql://`, `sqlite://path`, or a
    /// plain file path. Anything else is refused, saying what to write — above all a libpq
    /// keyword string (`host=db password=… dbname=shop`), which would otherwise be taken
    /// for the name of a SQLite file (and a file named after the password would appear).
    /// The message never repeats the value: it may hold a password.
    pub fn parse(raw: String) -> Result<Self, String> {
        const WHAT_TO_WRITE: &str = "write postgres://user:password@host:5432/dbname for \
             PostgreSQL, or a file path (or sqlite://path) for SQLite";
        if raw.trim().is_empty() {
            return Err("database_url must not be empty".into());
        }
        if let Some((scheme, _)) = raw.split_once("://")
            && !["postgres", "postgresql", "sqlite"].contains(&scheme)
        {
            return Err(format!(
                "database_url: the scheme {scheme:?} is not a database Bazaar uses; {WHAT_TO_WRITE}"
            ));
        }
        let keyword_string = !raw.contains("://")
            && raw.split_whitespace().any(|token| {
                token
                    .split_once('=')
                    .is_some_and(|(key, _)| is_libpq_keyword(key))
            });
        if keyword_string {
            return Err(format!(
                "database_url looks like a libpq keyword string (host=… dbname=…), which is not \
                 accepted; {WHAT_TO_WRITE}"
            ));
        }
        Ok(Self(raw))
    }
}

fn is_libpq_keyword(key: &str) -> bool {
    [
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "sslmode",
        "passfile",
        "connect_timeout",
        "application_name",
        "options",
        "service",
    ]
    .contains(&key.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        server: ServerSettings,
        auth: AuthSettings,
        modules: SampleModules,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct SampleModules {
        catalog: ModuleSettings,
    }

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let sample: Sample = load_with_env(None, env(&[])).expect("loads");
        assert_eq!(sample.server.bind, "127.0.0.1:8080");
        assert!(sample.auth.admin_token.is_none());
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let dir = tempfile_dir();
        let path = dir.join("bazaar.toml");
        std::fs::write(&path, "[server]\nbind = \"127.0.0.1:9000\"\nworkers = 3\n")
            .expect("writes");
        let sample: Sample = load_with_env(
            Some(&path),
            env(&[
                ("BAZAAR__SERVER__BIND", "0.0.0.0:7000"),
                (
                    "BAZAAR__MODULES__CATALOG__DATABASE_URL",
                    "postgres://u:pw@h/db",
                ),
            ]),
        )
        .expect("loads");
        assert_eq!(sample.server.bind, "0.0.0.0:7000");
        assert_eq!(sample.server.workers, Some(3));
        let url = sample.modules.catalog.database_url.expect("set");
        assert!(url.is_postgres());
        assert_eq!(url.redacted(), "postgres://u:%5Bredacted%5D@h/db");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_keyword_string_or_a_foreign_scheme_is_refused_without_repeating_it() {
        let error = load_with_env::<Sample>(
            None,
            env(&[(
                "BAZAAR__MODULES__CATALOG__DATABASE_URL",
                "host=db.internal password=hunter2 dbname=catalog",
            )]),
        )
        .expect_err("refused")
        .to_string();
        assert!(error.contains("modules.catalog.database_url"), "{error}");
        assert!(error.contains("postgres://user:password@host"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let error = DatabaseUrl::parse("mysql://u:hunter2@db/shop".into()).expect_err("refused");
        assert!(
            error.contains("\"mysql\"") && !error.contains("hunter2"),
            "{error}"
        );
        for accepted in [
            "postgres://u@db/shop",
            "postgresql://db/shop",
            "sqlite://./data/x.db",
            "./data/catalog.db",
            "/var/lib/bazaar/data/a=b.db",
        ] {
            assert!(DatabaseUrl::parse(accepted.into()).is_ok(), "{accepted}");
        }
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let error = load_with_env::<Sample>(None, env(&[("BAZAAR__SERVER__WORKERS", "many")]))
            .expect_err("refused");
        assert!(error.to_string().contains("server.workers"), "{error}");
        let unknown = load_with_env::<Sample>(None, env(&[("BAZAAR__SERVER__BINDD", "x")]))
            .expect_err("refused");
        assert!(unknown.to_string().contains("bindd"), "{unknown}");
    }

    #[test]
    fn validation_names_the_key() {
        let server = ServerSettings {
            bind: "nowhere".into(),
            ..ServerSettings::default()
        };
        assert!(
            server
                .validate()
                .expect_err("refused")
                .to_string()
                .contains("server.bind")
        );
        let shop = ShopSettings {
            currency: "euro".into(),
        };
        assert!(
            shop.validate()
                .expect_err("refused")
                .to_string()
                .contains("shop.currency")
        );
    }

    #[test]
    fn placement_combines_mode_and_features() {
        let unset = ModuleSettings::default();
        assert_eq!(
            unset.placement("orders", true).expect("ok"),
            Placement::Local
        );
        assert_eq!(
            unset.placement("orders", false).expect("ok"),
            Placement::Absent
        );
        let local = ModuleSettings {
            mode: Some(ModuleMode::Local),
            ..ModuleSettings::default()
        };
        let error = local
            .placement("orders", false)
            .expect_err("not compiled in");
        assert!(error.to_string().contains("modules.orders.mode"), "{error}");
        let remote = ModuleSettings {
            mode: Some(ModuleMode::Remote),
            ..ModuleSettings::default()
        };
        let error = remote.placement("orders", true).expect_err("needs a url");
        assert!(error.to_string().contains("modules.orders.url"), "{error}");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bazaar-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("creates dir");
        dir
    }
}
