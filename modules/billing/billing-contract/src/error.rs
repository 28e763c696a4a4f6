use chassis::problem::{Problem, ProblemCode, codes};
use chassis::remote::RemoteError;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::dto::PaymentStatus;

/// What the [`crate::Billing`] port can answer besides success. The local implementation
/// and [`crate::HttpBilling`] return the same cases for the same situations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("order {0} was never charged")]
    PaymentNotFound(Uuid),
    #[error("order {order_id} was charged before with another amount")]
    ChargeConflict { order_id: Uuid },
    #[error("order {order_id} was refunded before any charge of it: no charge is taken any more")]
    ChargeVoided { order_id: Uuid },
    #[error("the payment of order {order_id} is {status} and cannot be refunded")]
    NotRefundable {
        order_id: Uuid,
        status: PaymentStatus,
    },
    #[error("billing unavailable: {0}")]
    Unavailable(String),
    #[error("billing failed: {0}")]
    Internal(String),
}

pub(crate) mod code {
    pub(crate) const PAYMENT_NOT_FOUND: &str = "payment_not_found";
    pub(crate) const CHARGE_CONFLICT: &str = "charge_conflict";
    pub(crate) const CHARGE_VOIDED: &str = "charge_voided";
    pub(crate) const NOT_REFUNDABLE: &str = "payment_not_refundable";
}

impl ProblemCode for BillingError {
    fn status(&self) -> u16 {
        match self {
            BillingError::InvalidRequest(_) => 422,
            BillingError::PaymentNotFound(_) => 404,
            BillingError::ChargeConflict { .. }
            | BillingError::ChargeVoided { .. }
            | BillingError::NotRefundable { .. } => 409,
            BillingError::Unavailable(_) => 503,
            BillingError::Internal(_) => 500,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            BillingError::InvalidRequest(_) => codes::VALIDATION_FAILED,
            BillingError::PaymentNotFound(_) => code::PAYMENT_NOT_FOUND,
            BillingError::ChargeConflict { .. } => code::CHARGE_CONFLICT,
            BillingError::ChargeVoided { .. } => code::CHARGE_VOIDED,
            BillingError::NotRefundable { .. } => code::NOT_REFUNDABLE,
            BillingError::Unavailable(_) => codes::DEPENDENCY_UNAVAILABLE,
            BillingError::Internal(_) => codes::INTERNAL_ERROR,
        }
    }

    fn extensions(&self) -> Map<String, Value> {
        let mut map = Map::new();
        match self {
            BillingError::PaymentNotFound(order_id)
            | BillingError::ChargeConflict { order_id }
            | BillingError::ChargeVoided { order_id } => {
                map.insert("order_id".into(), order_id.to_string().into());
            }
            BillingError::NotRefundable { order_id, status } => {
                map.insert("order_id".into(), order_id.to_string().into());
                map.insert("payment_status".into(), status.as_str().into());
            }
            BillingError::InvalidRequest(_)
            | BillingError::Unavailable(_)
            | BillingError::Internal(_) => {}
        }
        map
    }
}

impl BillingError {
    /// Rebuilds the error a billing process rendered as a problem document.
    pub(crate) fn from_problem(problem: Problem) -> Self {
        let order = problem
            .extension_str("order_id")
            .and_then(|text| Uuid::parse_str(text).ok());
        let rebuilt = match problem.code.as_str() {
            code::PAYMENT_NOT_FOUND => order.map(BillingError::PaymentNotFound),
            code::CHARGE_CONFLICT => {
                order.map(|order_id| BillingError::ChargeConflict { order_id })
            }
            code::CHARGE_VOIDED => order.map(|order_id| BillingError::ChargeVoided { order_id }),
            code::NOT_REFUNDABLE => order
                .zip(
                    problem
                        .extension_str("payment_status")
                        .and_then(PaymentStatus::parse),
                )
                .map(|(order_id, status)| BillingError::NotRefundable { order_id, status }),
            codes::VALIDATION_FAILED => Some(BillingError::InvalidRequest(problem.detail.clone())),
            codes::DEPENDENCY_UNAVAILABLE => {
                Some(BillingError::Unavailable(problem.detail.clone()))
            }
            _ => None,
        };
        rebuilt.unwrap_or_else(|| BillingError::Internal(problem.to_string()))
    }
}

impl From<RemoteError> for BillingError {
    fn from(error: RemoteError) -> Self {
        match error {
            RemoteError::Problem(problem) => BillingError::from_problem(problem),
            RemoteError::Unavailable { .. } => BillingError::Unavailable(error.to_string()),
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
            BillingError::InvalidRequest("amount: must be at least 1".into()),
            BillingError::PaymentNotFound(id),
            BillingError::ChargeConflict { order_id: id },
            BillingError::ChargeVoided { order_id: id },
            BillingError::NotRefundable {
                order_id: id,
                status: PaymentStatus::Declined,
            },
            BillingError::Unavailable("gateway timed out".into()),
        ];
        for error in errors {
            let problem = Problem::from(error.clone());
            let back = BillingError::from_problem(problem);
            match (&error, &back) {
                (BillingError::Unavailable(_), BillingError::Unavailable(_)) => {}
                _ => assert_eq!(back, error),
            }
        }
    }
}
