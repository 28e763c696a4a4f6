//! The catalog module's contract: everything another module may know about the catalog.
//!
//! It holds the [`Catalog`] port, its DTOs, its error enum, its event types and
//! [`HttpCatalog`], the remote client that implements the port over
//! `/internal/catalog/…`. Other modules depend on this crate only, never on the `catalog`
//! implementation crate. It may depend on the chassis without features (no diesel, no
//! actix) and on nothing else of Bazaar.

mod client;
mod dto;
mod error;
mod events;
mod port;
mod settings;

pub use client::HttpCatalog;
pub use dto::{
    LookupRequest, LookupResponse, Money, Product, Reservation, ReservationStatus, ReserveRequest,
    StockLevels, StockLine,
};
pub use error::CatalogError;
pub use events::{PriceChanged, ProductCreated, StockLow, event_types};
#[cfg(feature = "mocks")]
pub use port::MockCatalog;
pub use port::{Catalog, MAX_LOOKUP_IDS, MAX_RESERVATION_LINES, observed};
pub use settings::CatalogSettings;

/// The module's name, as used in config (`modules.catalog`), events and metrics.
pub const MODULE: &str = "catalog";
