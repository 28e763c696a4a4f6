//! The billing module's contract: everything another module may know about billing.
//!
//! It holds the [`Billing`] port (charge an order, refund an order), its DTOs, its error
//! enum, its event types and [`HttpBilling`], the remote client that implements the port
//! over `/internal/billing/…`. Other modules depend on this crate only, never on the
//! `billing` implementation crate. It may depend on the chassis without features and on
//! nothing else of Bazaar.

mod client;
mod dto;
mod error;
mod events;
mod port;
mod settings;

pub use client::HttpBilling;
pub use dto::{ChargeRequest, Payment, PaymentStatus};
pub use error::BillingError;
pub use events::{PaymentCaptured, PaymentDeclined, PaymentRefunded, event_types};
#[cfg(feature = "mocks")]
pub use port::MockBilling;
pub use port::{Billing, observed};
pub use settings::BillingSettings;

pub use chassis::money::Money;

/// The module's name, as used in config (`modules.billing`), events and metrics.
pub const MODULE: &str = "billing";
