use chassis::db::DbError;
use chassis::problem::{ProblemCode, codes};
use notifications_contract::NotificationsError;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Errors of notifications' own operations (the admin API, the event handler and the
/// port's implementation).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule; the message names the field.
    #[error("{0}")]
    Validation(String),
    #[error("webhook {0} not found")]
    WebhookNotFound(Uuid),
    /// An event this module cannot act on yet or at all (a payload that does not parse, a
    /// refund of an order whose customer is not known yet): the handler fails, the event is
    /// retried, then parked as a dead letter.
    #[error("cannot handle the event: {0}")]
    Event(String),
    #[error(transparent)]
    Port(NotificationsError),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for Error {
    fn from(error: diesel::result::Error) -> Self {
        Error::Database(DbError::from(error))
    }
}

impl From<NotificationsError> for Error {
    fn from(error: NotificationsError) -> Self {
        Error::Port(error)
    }
}

impl From<Error> for NotificationsError {
    fn from(error: Error) -> Self {
        match error {
            Error::Port(error) => error,
            Error::Validation(message) => NotificationsError::InvalidRequest(message),
            Error::Database(DbError::Unavailable(reason)) => {
                NotificationsError::Unavailable(reason)
            }
            other => NotificationsError::Internal(other.to_string()),
        }
    }
}

pub(crate) const WEBHOOK_NOT_FOUND: &str = "webhook_not_found";

impl ProblemCode for Error {
    fn status(&self) -> u16 {
        match self {
            Error::Validation(_) => 422,
            Error::WebhookNotFound(_) => 404,
            Error::Event(_) => 500,
            Error::Port(error) => error.status(),
            Error::Database(error) => error.status(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Error::Validation(_) => codes::VALIDATION_FAILED,
            Error::WebhookNotFound(_) => WEBHOOK_NOT_FOUND,
            Error::Event(_) => codes::INTERNAL_ERROR,
            Error::Port(error) => error.code(),
            Error::Database(error) => error.code(),
        }
    }

    fn extensions(&self) -> Map<String, Value> {
        match self {
            Error::WebhookNotFound(id) => {
                let mut map = Map::new();
                map.insert("webhook_id".into(), id.to_string().into());
                map
            }
            Error::Port(error) => error.extensions(),
            Error::Validation(_) | Error::Event(_) | Error::Database(_) => Map::new(),
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
            NotificationsError::from(Error::Validation("order_id: not a UUID".into())),
            NotificationsError::InvalidRequest("order_id: not a UUID".into())
        );
        assert!(matches!(
            NotificationsError::from(Error::Database(DbError::Unavailable("down".into()))),
            NotificationsError::Unavailable(_)
        ));
        assert!(matches!(
            NotificationsError::from(Error::Event("bad payload".into())),
            NotificationsError::Internal(_)
        ));
    }

    #[test]
    fn an_unknown_webhook_is_a_404_naming_it() {
        let id = Uuid::new_v4();
        let problem = Problem::from(Error::WebhookNotFound(id));
        assert_eq!(
            (problem.status, problem.code.as_str()),
            (404, WEBHOOK_NOT_FOUND)
        );
        assert_eq!(
            problem.extension_str("webhook_id"),
            Some(id.to_string().as_str())
        );
    }
}
