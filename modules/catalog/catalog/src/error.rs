use catalog_contract::CatalogError;
use chassis::db::DbError;
use chassis::problem::{ProblemCode, codes};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Errors of the catalog's own operations (the admin API and the port's implementation).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule; the message names the field.
    #[error("{0}")]
    Validation(String),
    #[error("sku {0:?} is already taken")]
    SkuTaken(String),
    #[error("product {0} not found")]
    ProductNotFound(Uuid),
    #[error("on_hand {on_hand} is below the {reserved} units reserved")]
    StockBelowReserved { on_hand: i64, reserved: i64 },
    /// A reserve found its order's reservation stored already; `reserve` answers from it.
    #[error("order {0} has a reservation already")]
    ReservationExists(Uuid),
    /// An answer the port defines (out of stock, reservation conflicts, …).
    #[error(transparent)]
    Port(CatalogError),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for Error {
    fn from(error: diesel::result::Error) -> Self {
        Error::Database(DbError::from(error))
    }
}

impl From<CatalogError> for Error {
    fn from(error: CatalogError) -> Self {
        Error::Port(error)
    }
}

impl From<Error> for CatalogError {
    fn from(error: Error) -> Self {
        match error {
            Error::Port(error) => error,
            Error::ProductNotFound(id) => CatalogError::ProductNotFound(id),
            Error::Validation(message) => CatalogError::InvalidRequest(message),
            Error::Database(DbError::Unavailable(reason)) => CatalogError::Unavailable(reason),
            other => CatalogError::Internal(other.to_string()),
        }
    }
}

impl ProblemCode for Error {
    fn status(&self) -> u16 {
        match self {
            Error::Validation(_) => 422,
            Error::SkuTaken(_) | Error::StockBelowReserved { .. } | Error::ReservationExists(_) => {
                409
            }
            Error::ProductNotFound(_) => 404,
            Error::Port(error) => error.status(),
            Error::Database(error) => error.status(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Error::Validation(_) => codes::VALIDATION_FAILED,
            Error::SkuTaken(_) => "sku_taken",
            Error::StockBelowReserved { .. } => "stock_below_reserved",
            Error::ReservationExists(_) => "reservation_exists",
            Error::ProductNotFound(_) => "product_not_found",
            Error::Port(error) => error.code(),
            Error::Database(error) => error.code(),
        }
    }

    fn extensions(&self) -> Map<String, Value> {
        match self {
            Error::ProductNotFound(id) => CatalogError::ProductNotFound(*id).extensions(),
            Error::Port(error) => error.extensions(),
            _ => Map::new(),
        }
    }
}
