//! The orders module's events (spec §5). Each carries the whole order, so that a consumer
//! (notifications: the customer's e-mail) needs nothing else.

use serde::{Deserialize, Serialize};

use crate::dto::Order;

pub mod event_types {
    pub const ORDER_CONFIRMED: &str = "orders.order_confirmed";
    pub const ORDER_REJECTED: &str = "orders.order_rejected";
    pub const ORDER_CANCELLED: &str = "orders.order_cancelled";
}

/// `orders.order_confirmed`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    pub order: Order,
}

/// `orders.order_rejected`; the reason is `order.rejection_reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    pub order: Order,
}

/// `orders.order_cancelled`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order: Order,
}
