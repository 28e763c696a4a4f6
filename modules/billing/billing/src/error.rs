use billing_contract::BillingError;
use chassis::db::DbError;
use chassis::problem::{ProblemCode, codes};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Errors of billing's own operations (the admin API and the port's implementation).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule; the message names the field.
    #[error("{0}")]
    Validation(String),
    #[error("invoice {0} not found")]
    InvoiceNotFound(Uuid),
    /// An answer the port defines (conflicts, not refundable, gateway unavailable, …).
    #[error(transparent)]
    Port(BillingError),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for Error {
    fn from(error: diesel::result::Error) -> Self {
        Error::Database(DbError::from(error))
    }
}

impl From<BillingError> for Error {
    fn from(error: BillingError) -> Self {
        Error::Port(error)
    }
}

impl From<Error> for BillingError {
    fn from(error: Error) -> Self {
        match error {
            Error::Port(error) => error,
            Error::Validation(message) => BillingError::InvalidRequest(message),
            Error::Database(DbError::Unavailable(reason)) => BillingError::Unavailable(reason),
            other => BillingError::Internal(other.to_string()),
        }
    }
}

impl ProblemCode for Error {
    fn status(&self) -> u16 {
        match self {
            Error::Validation(_) => 422,
            Error::InvoiceNotFound(_) => 404,
            Error::Port(error) => error.status(),
            Error::Database(error) => error.status(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Error::Validation(_) => codes::VALIDATION_FAILED,
            Error::InvoiceNotFound(_) => "invoice_not_found",
            Error::Port(error) => error.code(),
            Error::Database(error) => error.code(),
        }
    }

    fn extensions(&self) -> Map<String, Value> {
        match self {
            Error::InvoiceNotFound(id) => {
                let mut map = Map::new();
                map.insert("invoice_id".into(), id.to_string().into());
                map
            }
            Error::Port(error) => error.extensions(),
            Error::Validation(_) | Error::Database(_) => Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chassis::problem::Problem;

    use super::*;

    #[test]
    fn errors_map_to_the_port_s_cases() {
        assert_eq!(
            BillingError::from(Error::Validation("token: must not be empty".into())),
            BillingError::InvalidRequest("token: must not be empty".into())
        );
        assert!(matches!(
            BillingError::from(Error::Database(DbError::Unavailable("down".into()))),
            BillingError::Unavailable(_)
        ));
        assert!(matches!(
            BillingError::from(Error::Database(DbError::Task("lost".into()))),
            BillingError::Internal(_)
        ));
        let order_id = Uuid::new_v4();
        assert_eq!(
            BillingError::from(Error::Port(BillingError::ChargeConflict { order_id })),
            BillingError::ChargeConflict { order_id }
        );
    }

    #[test]
    fn an_unknown_invoice_is_a_404_naming_it() {
        let id = Uuid::new_v4();
        let problem = Problem::from(Error::InvoiceNotFound(id));
        assert_eq!(
            (problem.status, problem.code.as_str()),
            (404, "invoice_not_found")
        );
        assert_eq!(
            problem.extension_str("invoice_id"),
            Some(id.to_string().as_str())
        );
    }
}
