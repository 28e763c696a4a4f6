//! The base every module's remote client is built on (spec §8): a per-call timeout,
//! retries with jittered exponential backoff for idempotent calls only, a circuit breaker
//! that opens after consecutive failures and half-opens after a cool-down, a cap on
//! concurrent calls, the service token, and problem documents handed back to the caller
//! so that it can rebuild its own error type.

mod breaker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::Instrument as _;
use url::Url;

pub use breaker::{BreakerPass, BreakerState, CircuitBreaker};

use crate::problem::{PROBLEM_JSON, Problem};
use crate::secret::Secret;

/// Tuning of every remote client; config section `remote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteSettings {
    /// Timeout of each attempt's request, from connecting to the end of the answer. The
    /// wait for a slot under `max_concurrency` is bounded by the same duration but is not
    /// part of it (a peer is not blamed for a request cut short by local queueing), so an
    /// attempt can take up to twice `timeout`, and a call `1 + retries` such attempts plus
    /// the delays between them.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra attempts for idempotent calls after a transient failure.
    pub retries: u32,
    /// First retry delay; doubles each time, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before letting one probe call through.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Calls in flight at once to one peer. A call beyond it waits for a slot for up to
    /// `timeout`, and then fails as unavailable without being sent: that refusal is not
    /// the peer failing, so it does not count towards `breaker_failures` and is not
    /// retried.
    pub max_concurrency: usize,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            retries: 2,
            retry_delay: Duration::from_millis(50),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
            max_concurrency: 64,
        }
    }
}

/// What a remote call can end in, besides success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The peer answered with a problem document; the caller maps its `code` back.
    #[error("{0}")]
    Problem(Problem),
    /// The peer could not be reached, timed out, answered 502/503/504, or the circuit
    /// breaker is open. Callers see the same `Unavailable` case a local module reports.
    #[error("{peer} is unavailable: {reason}")]
    Unavailable { peer: String, reason: String },
}

/// The peer's answer to a hosting check: a [`RemoteClient::check_peer`] that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Not reached (down, timed out, circuit open): worth waiting for.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer answered 401: the two processes have different `auth.service_token`s.
    #[error("refuses this process's service token: auth.service_token must be the same on both")]
    TokenRefused,
    /// Something answers at the URL, but not a Bazaar process's operations endpoints.
    #[error("does not look like a Bazaar process: {0}")]
    NotBazaar(String),
    /// A Bazaar process answers, but the module is not local there.
    #[error("does not host this module (it hosts: {})", if hosts.is_empty() { "none".to_owned() } else { hosts.join(", ") })]
    NotHosted { hosts: Vec<String> },
    /// The URL leads back to the process that asks.
    #[error("is this very process: the module's url points back at itself")]
    IsThisProcess,
}

/// Where every process says which modules it hosts, behind the service token.
pub const INTERNAL_MODULES_PATH: &str = "/internal/modules";

/// What `/internal/modules` answers: the process's instance id and its modules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerModules {
    /// Random per running process (per server in tests that run several in one binary).
    pub instance: uuid::Uuid,
    pub modules: Vec<PeerModule>,
}

/// One module as a process reports it: `local`, `remote` (with its `url`) or `absent`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerModule {
    pub name: String,
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Url>,
}

/// Whether a call may be repeated after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    Idempotent,
    NotIdempotent,
}

/// One peer module reached over HTTP.
#[derive(Debug, Clone)]
pub struct RemoteClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    peer: String,
    base_url: Url,
    http: reqwest::Client,
    token: Option<Secret>,
    breaker: CircuitBreaker,
    permits: Semaphore,
    settings: RemoteSettings,
}

/// A failed attempt, before it becomes a [`RemoteError`].
#[derive(Debug)]
enum Attempt {
    /// Not sent: the breaker is open, or no slot under the concurrency cap freed up in
    /// time. Says nothing about the peer, so it is neither counted by the breaker nor
    /// retried (a wait for a slot has spent the call's timeout already).
    Refused(String),
    /// Worth retrying (if idempotent) and counted by the breaker.
    Transient(String),
    /// The peer answered; a 4xx does not count against the breaker.
    Answered(Problem),
}

impl RemoteClient {
    /// `peer` names the module for errors, logs and metrics.
    pub fn new(
        peer: &str,
        base_url: Url,
        token: Option<Secret>,
        settings: RemoteSettings,
    ) -> Result<Self, RemoteError> {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .pool_max_idle_per_host(settings.max_concurrency)
            .build()
            .map_err(|error| RemoteError::Unavailable {
                peer: peer.to_owned(),
                reason: format!("cannot build HTTP client: {error}"),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                peer: peer.to_owned(),
                base_url,
                http,
                token,
                breaker: CircuitBreaker::new(settings.breaker_failures, settings.breaker_cooldown),
                permits: Semaphore::new(settings.max_concurrency.max(1)),
                settings,
            }),
        })
    }

    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// GET `path` (relative to the base URL) with query pairs; always idempotent.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, RemoteError> {
        let body = self
            .call(
                reqwest::Method::GET,
                path,
                query,
                None,
                Idempotency::Idempotent,
            )
            .await?;
        self.decode(&body)
    }

    /// POST a JSON body to `path`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        idempotency: Idempotency,
    ) -> Result<T, RemoteError> {
        let json = serde_json::to_vec(body)
            .map_err(|error| self.unavailable(format!("cannot encode request: {error}")))?;
        let body = self
            .call(reqwest::Method::POST, path, &[], Some(json), idempotency)
            .await?;
        self.decode(&body)
    }

    /// Whether the peer is ready to serve this client's module: it answers, accepts the
    /// service token, and hosts the module itself (its `/internal/modules`). For
    /// `/health/ready` and the start-up check. `own_instance` is the asking process's
    /// operations instance (`chassis::ops::Operations::instance`), so that a module configured as remote to the
    /// very process that asks is caught rather than reported as ready.
    pub async fn check_peer(&self, own_instance: uuid::Uuid) -> Result<(), PeerError> {
        let hosted: PeerModules = self
            .get(INTERNAL_MODULES_PATH, &[])
            .await
            .map_err(|error| match error {
                RemoteError::Problem(problem) if problem.status == 401 => PeerError::TokenRefused,
                RemoteError::Problem(problem) if problem.status == 404 => {
                    PeerError::NotBazaar(format!("{INTERNAL_MODULES_PATH} answered 404"))
                }
                RemoteError::Problem(problem) => PeerError::NotBazaar(format!(
                    "{INTERNAL_MODULES_PATH} answered {}",
                    problem.status
                )),
                RemoteError::Unavailable { reason, .. } => PeerError::Unreachable(reason),
            })?;
        if hosted.instance == own_instance {
            return Err(PeerError::IsThisProcess);
        }
        let local: Vec<String> = hosted
            .modules
            .into_iter()
            .filter(|module| module.mode == "local")
            .map(|module| module.name)
            .collect();
        if local.iter().any(|name| *name == self.inner.peer) {
            Ok(())
        } else {
            Err(PeerError::NotHosted { hosts: local })
        }
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, RemoteError> {
        // An answer we cannot read means peers disagree on the contract; the caller can do
        // nothing about it but wait for a fixed peer, so it counts as unavailable.
        serde_json::from_slice(body)
            .map_err(|error| self.unavailable(format!("unreadable answer: {error}")))
    }

    fn unavailable(&self, reason: impl Into<String>) -> RemoteError {
        RemoteError::Unavailable {
            peer: self.inner.peer.clone(),
            reason: reason.into(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        idempotency: Idempotency,
    ) -> Result<Vec<u8>, RemoteError> {
        let url = self
            .inner
            .base_url
            .join(path.trim_start_matches('/'))
            .map_err(|error| self.unavailable(format!("bad path {path}: {error}")))?;
        let started = Instant::now();
        let attempt = || self.attempt(method.clone(), url.clone(), query, body.clone());
        let outcome = match idempotency {
            Idempotency::Idempotent => {
                let backoff = ExponentialBuilder::default()
                    .with_min_delay(self.inner.settings.retry_delay)
                    .with_max_delay(self.inner.settings.timeout)
                    .with_max_times(self.inner.settings.retries as usize)
                    .with_jitter();
                attempt
                    .retry(backoff)
                    .when(|failure| matches!(failure, Attempt::Transient(_)) && self.inner.breaker.allows())
                    .notify(|failure, delay| {
                        tracing::debug!(peer = %self.inner.peer, ?failure, ?delay, "retrying remote call");
                    })
                    .await
            }
            Idempotency::NotIdempotent => attempt().await,
        };
        let outcome_label = match &outcome {
            Ok(_) => "ok",
            Err(Attempt::Answered(_)) => "problem",
            Err(Attempt::Transient(_) | Attempt::Refused(_)) => "unavailable",
        };
        // The HTTP side of a remote port call, retries included; the port call itself is
        // measured by `chassis::port::observe`, local or remote alike.
        metrics::histogram!(
            "bazaar_remote_call_duration_seconds",
            "peer" => self.inner.peer.clone(),
            "outcome" => outcome_label,
        )
        .record(started.elapsed().as_secs_f64());
        metrics::gauge!("bazaar_circuit_breaker_open", "peer" => self.inner.peer.clone()).set(
            f64::from(u8::from(self.inner.breaker.state() != BreakerState::Closed)),
        );
        outcome.map_err(|failure| match failure {
            Attempt::Answered(problem) => RemoteError::Problem(problem),
            Attempt::Transient(reason) | Attempt::Refused(reason) => self.unavailable(reason),
        })
    }

    async fn attempt(
        &self,
        method: reqwest::Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, Attempt> {
        // Checked before queueing for a slot too, so that an open breaker answers at once.
        if !self.inner.breaker.allows() {
            return Err(Attempt::Refused("circuit breaker is open".into()));
        }
        // The slot is taken before the breaker's pass, so that a half-open probe is not
        // held up (nor given up) by local queueing.
        let _slot = tokio::time::timeout(self.inner.settings.timeout, self.inner.permits.acquire())
            .await
            .map_err(|_| Attempt::Refused("too many calls in flight".into()))?
            .map_err(|_| Attempt::Refused("client is shut down".into()))?;
        let Some(pass) = self.inner.breaker.try_acquire() else {
            return Err(Attempt::Refused("circuit breaker is open".into()));
        };
        // If this future is dropped while the request is out, the pass drops with it and
        // the breaker does not wait for an outcome that will never come.
        let result = self.send(method, url, query, body).await;
        match &result {
            Err(Attempt::Transient(_)) => pass.failed(),
            Ok(_) | Err(Attempt::Answered(_)) => pass.succeeded(),
            // Not sent, so nothing learnt about the peer.
            Err(Attempt::Refused(_)) => drop(pass),
        }
        result
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, Attempt> {
        // One HTTP client span per attempt, named and described as OpenTelemetry's HTTP
        // conventions say; the peer's server span continues it.
        let span = tracing::info_span!(
            "HTTP client request",
            otel.name = %method,
            otel.kind = "client",
            http.request.method = %method,
            url.full = %url,
            server.address = url.host_str().unwrap_or_default(),
            server.port = url.port_or_known_default().unwrap_or_default(),
            http.response.status_code = tracing::field::Empty,
        );
        self.send_in(method, url, query, body)
            .instrument(span)
            .await
    }

    async fn send_in(
        &self,
        method: reqwest::Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, Attempt> {
        let mut headers = reqwest::header::HeaderMap::new();
        crate::trace::inject_current(&mut headers);
        let mut request = self
            .inner
            .http
            .request(method, url)
            .headers(headers)
            .header(reqwest::header::ACCEPT, "application/json");
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(token) = &self.inner.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| Attempt::Transient(describe(&error)))?;
        let status = response.status();
        tracing::Span::current().record("http.response.status_code", status.as_u16());
        let is_problem = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with(PROBLEM_JSON));
        let bytes = response
            .bytes()
            .await
            .map_err(|error| Attempt::Transient(describe(&error)))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let problem = if is_problem {
            serde_json::from_slice::<Problem>(&bytes).ok()
        } else {
            None
        };
        // A 503 problem document is the peer's own answer ("my dependency is down"): the
        // peer is up, so it is handed back whole and does not count against the breaker.
        // A bare 502/503/504 comes from the peer being unreachable behind a proxy, or down.
        if problem.is_none() && matches!(status.as_u16(), 502..=504) {
            return Err(Attempt::Transient(format!("peer answered {status}")));
        }
        match problem {
            Some(problem) => Err(Attempt::Answered(problem)),
            None if status.is_server_error() => {
                Err(Attempt::Transient(format!("peer answered {status}")))
            }
            None => Err(Attempt::Answered(Problem::new(
                status.as_u16(),
                "unexpected_answer",
                format!("peer answered {status} without a problem document"),
            ))),
        }
    }
}

/// reqwest is built without a bundled TLS crypto provider (aws-lc costs minutes of build);
/// ring is the one Bazaar ships. Call before building any `reqwest::Client`.
pub fn install_tls_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

/// What went wrong, without the URL that reqwest's own text carries: the reason may reach
/// a problem document, and the peer's address is none of the caller's business.
fn describe(error: &reqwest::Error) -> String {
    // The operator's log keeps the cause, whose text carries no URL.
    let cause = std::error::Error::source(error).map(ToString::to_string);
    tracing::debug!(
        cause = cause.as_deref().unwrap_or("none"),
        "call to a peer failed"
    );
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "connection failed".into()
    } else if error.is_body() || error.is_decode() {
        "the answer's body could not be read".into()
    } else {
        "the request failed".into()
    }
}
