//! Billing's events (spec §5). Each names the order's customer, so that a consumer needs
//! no other event about the order (spec §5: payloads carry what consumers need).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Money;

pub mod event_types {
    pub const PAYMENT_CAPTURED: &str = "billing.payment_captured";
    pub const PAYMENT_DECLINED: &str = "billing.payment_declined";
    pub const PAYMENT_REFUNDED: &str = "billing.payment_refunded";
}

/// `billing.payment_captured`, with the invoice issued for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount: Money,
    pub invoice_id: Uuid,
    pub invoice_number: String,
    /// The customer, as the charge named them.
    pub customer_email: String,
}

/// `billing.payment_declined`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount: Money,
    pub reason: String,
    /// The customer, as the charge named them.
    pub customer_email: String,
}

/// `billing.payment_refunded`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount: Money,
    /// The customer, as the charge named them: whom the refund e-mail goes to.
    pub customer_email: String,
}
