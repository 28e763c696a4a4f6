//! The notifications module: customer e-mails and signed webhooks.
//!
//! It owns its tables (see `schema.rs` and `migrations/notifications/`) and no other module
//! reads them. It consumes `orders.order_confirmed`, `orders.order_rejected`,
//! `orders.order_cancelled` and `billing.payment_refunded` (one e-mail to the customer per
//! outcome, however often an event is delivered) and `catalog.stock_low` (an e-mail to
//! `notifications.operator_email`) through its inbox, and POSTs every event a webhook
//! subscribes to, signed with HMAC-SHA256. The event handler only records deliveries; a
//! delivery worker sends them — SMTP through lettre, or `.eml` files under
//! `<data_dir>/outbox-mail/` when no SMTP server is configured — and retries failures with
//! exponential backoff and jitter. It serves the admin `/notifications` routes and the
//! `/internal/notifications/*` routes behind `HttpNotifications`. It depends on the chassis
//! and on contract crates only, never on other modules' implementation crates.

mod channels;
mod error;
mod http;
mod module;
mod render;
mod repository;
mod retry;
mod schema;
mod service;
mod signature;
mod target;

pub use error::Error;
pub use module::{MIGRATIONS, NotificationsHandler, NotificationsModule};
pub use service::{EVENT_TYPES, NotificationsService};

/// The header that carries a webhook call's signature.
pub const SIGNATURE_HEADER: &str = signature::HEADER;
