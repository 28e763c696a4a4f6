//! The billing module: payments, refunds and invoices.
//!
//! It owns its tables (see `schema.rs` and `migrations/billing/`) and no other module
//! reads them. It implements the [`billing_contract::Billing`] port through a
//! [`PaymentGateway`] (the built-in [`SimulatedGateway`] is deterministic on the token,
//! like a provider's test cards), issues one invoice per captured payment, numbered without
//! gaps per year, and raises `billing.payment_captured`, `billing.payment_declined` and
//! `billing.payment_refunded` through its outbox. It serves the admin `/billing/*` routes
//! and the `/internal/billing/*` routes behind `HttpBilling`. It depends on the chassis and
//! on its own contract crate; it may depend on other modules' contract crates, never on
//! their implementation crates.

mod domain;
mod error;
mod gateway;
mod http;
mod module;
mod repository;
mod schema;
mod service;

pub use domain::Invoice;
pub use error::Error;
pub use gateway::{
    ChargeOutcome, GatewayCharge, GatewayError, GatewayRefund, PaymentGateway, RefundOutcome,
    SimulatedGateway,
};
pub use module::{BillingModule, MIGRATIONS};
pub use service::BillingService;
