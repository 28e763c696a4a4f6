use std::sync::Arc;

use async_trait::async_trait;
use chassis::port::{Mode, observe};
use uuid::Uuid;

use crate::dto::{ChargeRequest, Payment};
use crate::error::BillingError;

/// Billing as other modules see it: take an order's money, give it back.
///
/// Every method MUST return [`BillingError::Unavailable`] when billing, or the payment
/// provider behind it, cannot be reached or does not answer in time — callers MUST treat
/// that as "try again later". Both methods are idempotent per order id: calling again
/// after a success (or after a lost answer) MUST NOT move money twice and MUST answer the
/// same payment.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Billing: Send + Sync {
    /// Charges an order once.
    ///
    /// Answers the payment: `captured` (an invoice is issued with it) or `declined` (the
    /// provider refused; charging again answers the same declined payment). MUST return
    /// [`BillingError::InvalidRequest`] for an amount below 1, another currency than the
    /// shop's, an empty token or an empty customer e-mail;
    /// [`BillingError::ChargeConflict`] when the order was charged before with another
    /// amount; and [`BillingError::ChargeVoided`], without asking the payment provider,
    /// when the order was refunded before billing saw any charge of it (see
    /// [`Billing::refund`]).
    async fn charge(&self, request: ChargeRequest) -> Result<Payment, BillingError>;

    /// Gives a captured order's money back in full.
    ///
    /// A captured payment becomes `refunded`; a refunded one answers as is. MUST return
    /// [`BillingError::PaymentNotFound`] for an order never charged — and void the order:
    /// the caller has given it up, so a charge of it arriving later (delayed, retried) is
    /// refused — and
    /// [`BillingError::NotRefundable`] for a declined one. A refund asked while no charge
    /// of the order went through (every attempt failed, or one crashed long ago) MUST
    /// decline the payment — so that no later charge captures it — and answer
    /// [`BillingError::NotRefundable`]; while an attempt is running it answers
    /// [`BillingError::Unavailable`].
    async fn refund(&self, order_id: Uuid) -> Result<Payment, BillingError>;
}

/// The port as the composition root hands it out, local or remote alike: each call is a
/// span and a latency sample (`chassis::port::observe`), so an order's trace and metrics
/// have the same shape wherever the module runs.
pub fn observed(port: Arc<dyn Billing>, mode: Mode) -> Arc<dyn Billing> {
    Arc::new(Observed { port, mode })
}

struct Observed {
    port: Arc<dyn Billing>,
    mode: Mode,
}

#[async_trait]
impl Billing for Observed {
    async fn charge(&self, request: ChargeRequest) -> Result<Payment, BillingError> {
        observe(
            crate::MODULE,
            "charge",
            self.mode,
            self.port.charge(request),
        )
        .await
    }

    async fn refund(&self, order_id: Uuid) -> Result<Payment, BillingError> {
        observe(
            crate::MODULE,
            "refund",
            self.mode,
            self.port.refund(order_id),
        )
        .await
    }
}
