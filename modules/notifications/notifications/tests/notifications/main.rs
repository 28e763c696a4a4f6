//! Notifications' integration tests: one binary (faster links), one module per concern.

mod delivery;
mod http_api;
mod smtp;
mod support;
mod webhooks;
