//! Billing's integration tests: one binary (faster links), one module per concern.

mod concurrency;
mod conformance;
mod events;
mod http_api;
mod support;
mod upgrade;
