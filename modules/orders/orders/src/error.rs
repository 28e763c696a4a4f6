use chassis::db::DbError;
use chassis::problem::{ProblemCode, codes};
use orders_contract::OrdersError;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Errors of the orders module's own operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule; the message names the field.
    #[error("{0}")]
    Validation(String),
    #[error("lines: product {0} is not in the catalog")]
    UnknownProduct(Uuid),
    #[error("Idempotency-Key: this key was used for another request")]
    IdempotencyKeyReused,
    #[error("order {0} not found")]
    OrderNotFound(Uuid),
    #[error("order {order_id} is {status}: only a confirmed order can be cancelled")]
    NotCancellable {
        order_id: Uuid,
        status: &'static str,
    },
    /// A peer module (catalog, billing) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for Error {
    fn from(error: diesel::result::Error) -> Self {
        Error::Database(DbError::from(error))
    }
}

impl From<Error> for OrdersError {
    fn from(error: Error) -> Self {
        match error {
            Error::OrderNotFound(id) => OrdersError::OrderNotFound(id),
            Error::Unavailable(reason) | Error::Database(DbError::Unavailable(reason)) => {
                OrdersError::Unavailable(reason)
            }
            other => OrdersError::Internal(other.to_string()),
        }
    }
}

impl ProblemCode for Error {
    fn status(&self) -> u16 {
        match self {
            Error::Validation(_) | Error::UnknownProduct(_) | Error::IdempotencyKeyReused => 422,
            Error::OrderNotFound(_) => 404,
            Error::NotCancellable { .. } => 409,
            Error::Unavailable(_) => 503,
            Error::Database(error) => error.status(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Error::Validation(_) => codes::VALIDATION_FAILED,
            Error::UnknownProduct(_) => "unknown_product",
            Error::IdempotencyKeyReused => "idempotency_key_reused",
            Error::OrderNotFound(_) => "order_not_found",
            Error::NotCancellable { .. } => "order_not_cancellable",
            Error::Unavailable(_) => codes::DEPENDENCY_UNAVAILABLE,
            Error::Database(error) => error.code(),
        }
    }

    fn extensions(&self) -> Map<String, Value> {
        let mut map = Map::new();
        match self {
            Error::UnknownProduct(id) => {
                map.insert("product_id".into(), id.to_string().into());
            }
            Error::OrderNotFound(id) | Error::NotCancellable { order_id: id, .. } => {
                map.insert("order_id".into(), id.to_string().into());
            }
            _ => {}
        }
        map
    }
}
