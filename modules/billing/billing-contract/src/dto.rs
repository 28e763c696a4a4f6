use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::Money;

/// Where an order's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// The money was taken.
    Captured,
    /// The payment provider refused the payment.
    Declined,
    /// The money was given back.
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Captured => "captured",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Refunded => "refunded",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "captured" => Some(PaymentStatus::Captured),
            "declined" => Some(PaymentStatus::Declined),
            "refunded" => Some(PaymentStatus::Refunded),
            _ => None,
        }
    }
}

impl std::fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An order's payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub amount: Money,
    pub status: PaymentStatus,
    /// The payment provider's reference, when it answered.
    pub provider_ref: Option<String>,
    /// The invoice issued for the payment (`GET /billing/invoices/{id}`), once captured.
    pub invoice_id: Option<Uuid>,
    pub refunded_amount: Money,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /internal/billing/charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChargeRequest {
    pub order_id: Uuid,
    /// At least 1, in the shop's currency.
    #[schema(value_type = chassis::money::ChargeAmount)]
    pub amount: Money,
    /// The payment method's token, as the payment provider issued it: 1 to 200
    /// characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub token: String,
    /// Whom the order belongs to. Billing keeps it with the payment and names it in its
    /// events, so that their consumers (the refund e-mail) need nothing else. 1 to 254
    /// characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 254,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub customer_email: String,
}
