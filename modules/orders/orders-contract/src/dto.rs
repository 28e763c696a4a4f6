use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::Money;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// The saga is still running.
    Pending,
    /// Stock sold and payment captured.
    Confirmed,
    /// The order could not be fulfilled; see `rejection_reason`.
    Rejected,
    /// A confirmed order, refunded and restocked.
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(OrderStatus::Pending),
            "confirmed" => Some(OrderStatus::Confirmed),
            "rejected" => Some(OrderStatus::Rejected),
            "cancelled" => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectionReason {
    OutOfStock,
    PaymentDeclined,
    DependencyUnavailable,
}

impl RejectionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionReason::OutOfStock => "out_of_stock",
            RejectionReason::PaymentDeclined => "payment_declined",
            RejectionReason::DependencyUnavailable => "dependency_unavailable",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "out_of_stock" => Some(RejectionReason::OutOfStock),
            "payment_declined" => Some(RejectionReason::PaymentDeclined),
            "dependency_unavailable" => Some(RejectionReason::DependencyUnavailable),
            _ => None,
        }
    }
}

/// One line of an order, with the product's sku, name and price as they were when the
/// order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price: Money,
    pub line_total: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub status: OrderStatus,
    pub customer_email: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub rejection_reason: Option<RejectionReason>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
