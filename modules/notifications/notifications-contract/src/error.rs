use chassis::problem::{Problem, ProblemCode, codes};
use chassis::remote::RemoteError;

/// What the [`crate::Notifications`] port can answer besides success. The local
/// implementation and [`crate::HttpNotifications`] return the same cases for the same
/// situations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationsError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("notifications unavailable: {0}")]
    Unavailable(String),
    #[error("notifications failed: {0}")]
    Internal(String),
}

impl ProblemCode for NotificationsError {
    fn status(&self) -> u16 {
        match self {
            NotificationsError::InvalidRequest(_) => 422,
            NotificationsError::Unavailable(_) => 503,
            NotificationsError::Internal(_) => 500,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            NotificationsError::InvalidRequest(_) => codes::VALIDATION_FAILED,
            NotificationsError::Unavailable(_) => codes::DEPENDENCY_UNAVAILABLE,
            NotificationsError::Internal(_) => codes::INTERNAL_ERROR,
        }
    }
}

impl NotificationsError {
    /// Rebuilds the error a notifications process rendered as a problem document.
    pub(crate) fn from_problem(problem: Problem) -> Self {
        match problem.code.as_str() {
            codes::VALIDATION_FAILED => NotificationsError::InvalidRequest(problem.detail),
            codes::DEPENDENCY_UNAVAILABLE => NotificationsError::Unavailable(problem.detail),
            _ => NotificationsError::Internal(problem.to_string()),
        }
    }
}

impl From<RemoteError> for NotificationsError {
    fn from(error: RemoteError) -> Self {
        match error {
            RemoteError::Problem(problem) => NotificationsError::from_problem(problem),
            RemoteError::Unavailable { .. } => NotificationsError::Unavailable(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_trip_through_a_problem_document() {
        let errors = [
            NotificationsError::InvalidRequest("order_id: not a UUID".into()),
            NotificationsError::Unavailable("database down".into()),
        ];
        for error in errors {
            let back = NotificationsError::from_problem(Problem::from(error.clone()));
            match (&error, &back) {
                (NotificationsError::Unavailable(_), NotificationsError::Unavailable(_)) => {}
                _ => assert_eq!(back, error),
            }
        }
        let internal = NotificationsError::from_problem(Problem::internal());
        assert!(matches!(internal, NotificationsError::Internal(_)));
    }
}
