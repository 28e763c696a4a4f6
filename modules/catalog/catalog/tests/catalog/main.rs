//! The catalog's integration tests: one binary (faster links), one module per concern.

mod concurrency;
mod conformance;
mod http_api;
mod support;
