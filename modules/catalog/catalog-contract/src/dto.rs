use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use chassis::money::Money;

/// A product's stock: `available = on_hand - reserved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockLevels {
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub price: Money,
    pub stock: StockLevels,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One line of a reservation: so many units of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct StockLine {
    pub product_id: Uuid,
    /// At least 1.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "chassis::integer::exact")]
    pub quantity: u32,
}

/// Where an order's reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Stock is held for the order (counted in `reserved`).
    Reserved,
    /// The hold was given back; the order will not take the stock.
    Released,
    /// The stock was sold: it left `on_hand`.
    Committed,
    /// A sold order was cancelled and its stock put back on hand.
    Restocked,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "reserved",
            ReservationStatus::Released => "released",
            ReservationStatus::Committed => "committed",
            ReservationStatus::Restocked => "restocked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "reserved" => Some(ReservationStatus::Reserved),
            "released" => Some(ReservationStatus::Released),
            "committed" => Some(ReservationStatus::Committed),
            "restocked" => Some(ReservationStatus::Restocked),
            _ => None,
        }
    }
}

impl std::fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An order's reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reservation {
    pub order_id: Uuid,
    pub status: ReservationStatus,
    /// Sorted by product id; empty for a release that came before any reservation.
    pub lines: Vec<StockLine>,
}

/// Body of `POST /internal/catalog/products/lookup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LookupRequest {
    /// At most 200 ids.
    #[schema(max_items = 200)]
    pub ids: Vec<Uuid>,
}

/// Answer of `POST /internal/catalog/products/lookup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LookupResponse {
    pub items: Vec<Product>,
}

/// Body of `POST /internal/catalog/reservations/{order_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReserveRequest {
    /// 1 to 100 lines, each product once.
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<StockLine>,
}
