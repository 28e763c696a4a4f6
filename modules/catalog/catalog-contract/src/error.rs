use chassis::problem::{Problem, ProblemCode, codes};
use chassis::remote::RemoteError;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::dto::ReservationStatus;

/// What the [`crate::Catalog`] port can answer besides success. The local implementation
/// and [`crate::HttpCatalog`] return the same cases for the same situations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("product {0} not found")]
    ProductNotFound(Uuid),
    #[error("not enough stock of product {product_id}")]
    OutOfStock { product_id: Uuid },
    #[error("no reservation for order {0}")]
    ReservationNotFound(Uuid),
    #[error("the reservation of order {order_id} is {status}")]
    ReservationConflict {
        order_id: Uuid,
        status: ReservationStatus,
    },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
    #[error("catalog failed: {0}")]
    Internal(String),
}

pub(crate) mod code {
    pub(crate) const PRODUCT_NOT_FOUND: &str = "product_not_found";
    pub(crate) const OUT_OF_STOCK: &str = "out_of_stock";
    pub(crate) const RESERVATION_NOT_FOUND: &str = "reservation_not_found";
    pub(crate) const RESERVATION_CONFLICT: &str = "reservation_conflict";
}

impl ProblemCode for CatalogError {
    fn status(&self) -> u16 {
        match self {
            CatalogError::ProductNotFound(_) | CatalogError::ReservationNotFound(_) => 404,
            CatalogError::OutOfStock { .. } | CatalogError::ReservationConflict { .. } => 409,
            CatalogError::InvalidRequest(_) => 422,
            CatalogError::Unavailable(_) => 503,
            CatalogError::Internal(_) => 500,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            CatalogError::ProductNotFound(_) => code::PRODUCT_NOT_FOUND,
            CatalogError::OutOfStock { .. } => code::OUT_OF_STOCK,
            CatalogError::ReservationNotFound(_) => code::RESERVATION_NOT_FOUND,
            CatalogError::ReservationConflict { .. } => code::RESERVATION_CONFLICT,
            CatalogError::InvalidRequest(_) => codes::VALIDATION_FAILED,
            CatalogError::Unavailable(_) => codes::DEPENDENCY_UNAVAILABLE,
            CatalogError::Internal(_) => codes::INTERNAL_ERROR,
        }
    }

    fn extensions(&self) -> Map<String, Value> {
        let mut map = Map::new();
        match self {
            CatalogError::ProductNotFound(id) | CatalogError::OutOfStock { product_id: id } => {
                map.insert("product_id".into(), id.to_string().into());
            }
            CatalogError::ReservationNotFound(order_id) => {
                map.insert("order_id".into(), order_id.to_string().into());
            }
            CatalogError::ReservationConflict { order_id, status } => {
                map.insert("order_id".into(), order_id.to_string().into());
                map.insert("reservation_status".into(), status.as_str().into());
            }
            CatalogError::InvalidRequest(_)
            | CatalogError::Unavailable(_)
            | CatalogError::Internal(_) => {}
        }
        map
    }
}

impl CatalogError {
    /// Rebuilds the error a catalog process rendered as a problem document.
    pub(crate) fn from_problem(problem: Problem) -> Self {
        let uuid = |key: &str| {
            problem
                .extension_str(key)
                .and_then(|text| Uuid::parse_str(text).ok())
        };
        let rebuilt = match problem.code.as_str() {
            code::PRODUCT_NOT_FOUND => uuid("product_id").map(CatalogError::ProductNotFound),
            code::OUT_OF_STOCK => {
                uuid("product_id").map(|product_id| CatalogError::OutOfStock { product_id })
            }
            code::RESERVATION_NOT_FOUND => uuid("order_id").map(CatalogError::ReservationNotFound),
            code::RESERVATION_CONFLICT => uuid("order_id")
                .zip(
                    problem
                        .extension_str("reservation_status")
                        .and_then(ReservationStatus::parse),
                )
                .map(|(order_id, status)| CatalogError::ReservationConflict { order_id, status }),
            codes::VALIDATION_FAILED => Some(CatalogError::InvalidRequest(problem.detail.clone())),
            codes::DEPENDENCY_UNAVAILABLE => {
                Some(CatalogError::Unavailable(problem.detail.clone()))
            }
            _ => None,
        };
        rebuilt.unwrap_or_else(|| CatalogError::Internal(problem.to_string()))
    }
}

impl From<RemoteError> for CatalogError {
    fn from(error: RemoteError) -> Self {
        match error {
            RemoteError::Problem(problem) => CatalogError::from_problem(problem),
            RemoteError::Unavailable { .. } => CatalogError::Unavailable(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_trip_through_a_problem_document() {
        let id = Uuid::new_v4();
        let errors = [
            CatalogError::ProductNotFound(id),
            CatalogError::OutOfStock { product_id: id },
            CatalogError::ReservationNotFound(id),
            CatalogError::ReservationConflict {
                order_id: id,
                status: ReservationStatus::Released,
            },
            CatalogError::InvalidRequest("lines: must not be empty".into()),
        ];
        for error in errors {
            let problem = Problem::from(error.clone());
            assert_eq!(CatalogError::from_problem(problem), error);
        }
    }

    #[test]
    fn unavailable_becomes_503_dependency_unavailable() {
        let problem = Problem::from(CatalogError::Unavailable("db down".into()));
        assert_eq!(problem.status, 503);
        assert_eq!(problem.code, "dependency_unavailable");
        assert!(matches!(
            CatalogError::from_problem(problem),
            CatalogError::Unavailable(_)
        ));
    }
}
