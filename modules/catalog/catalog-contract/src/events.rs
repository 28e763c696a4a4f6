//! The catalog's events (spec §5): payloads carry what consumers need, so that no consumer
//! calls back for it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::dto::{Money, Product};

pub mod event_types {
    pub const PRODUCT_CREATED: &str = "catalog.product_created";
    pub const PRICE_CHANGED: &str = "catalog.price_changed";
    pub const STOCK_LOW: &str = "catalog.stock_low";
}

/// `catalog.product_created`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductCreated {
    pub product: Product,
}

/// `catalog.price_changed`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceChanged {
    pub product_id: Uuid,
    pub sku: String,
    pub old_price: Money,
    pub new_price: Money,
}

/// `catalog.stock_low`: available stock fell below the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLow {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub available: i64,
    pub threshold: i64,
}
