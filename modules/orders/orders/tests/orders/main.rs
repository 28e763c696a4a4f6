//! The orders module's integration tests: one binary, one module per concern. The catalog
//! and billing are mockall mocks of their ports; the real modules meet in the root crate's
//! end-to-end tests.

mod conformance;
mod http_api;
mod saga;
mod support;
mod upgrade;
