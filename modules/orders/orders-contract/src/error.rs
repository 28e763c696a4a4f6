use chassis::problem::{Problem, ProblemCode, codes};
use chassis::remote::RemoteError;
use serde_json::{Map, Value};
use uuid::Uuid;

/// What the [`crate::Orders`] port can answer besides success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrdersError {
    #[error("order {0} not found")]
    OrderNotFound(Uuid),
    #[error("orders unavailable: {0}")]
    Unavailable(String),
    #[error("orders failed: {0}")]
    Internal(String),
}

pub(crate) const ORDER_NOT_FOUND: &str = "order_not_found";

impl ProblemCode for OrdersError {
    fn status(&self) -> u16 {
        match self {
            OrdersError::OrderNotFound(_) => 404,
            OrdersError::Unavailable(_) => 503,
            OrdersError::Internal(_) => 500,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            OrdersError::OrderNotFound(_) => ORDER_NOT_FOUND,
            OrdersError::Unavailable(_) => codes::DEPENDENCY_UNAVAILABLE,
            OrdersError::Internal(_) => codes::INTERNAL_ERROR,
        }
    }

    fn extensions(&self) -> Map<String, Value> {
        let mut map = Map::new();
        if let OrdersError::OrderNotFound(id) = self {
            map.insert("order_id".into(), id.to_string().into());
        }
        map
    }
}

impl OrdersError {
    pub(crate) fn from_problem(problem: Problem) -> Self {
        match problem.code.as_str() {
            ORDER_NOT_FOUND => problem
                .extension_str("order_id")
                .and_then(|text| Uuid::parse_str(text).ok())
                .map(OrdersError::OrderNotFound)
                .unwrap_or_else(|| OrdersError::Internal(problem.to_string())),
            codes::DEPENDENCY_UNAVAILABLE => OrdersError::Unavailable(problem.detail),
            _ => OrdersError::Internal(problem.to_string()),
        }
    }
}

impl From<RemoteError> for OrdersError {
    fn from(error: RemoteError) -> Self {
        match error {
            RemoteError::Problem(problem) => OrdersError::from_problem(problem),
            RemoteError::Unavailable { .. } => OrdersError::Unavailable(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_survives_the_trip_through_a_problem_document() {
        let error = OrdersError::OrderNotFound(Uuid::new_v4());
        assert_eq!(
            OrdersError::from_problem(Problem::from(error.clone())),
            error
        );
    }
}
