//! The payment provider behind billing ([`PaymentGateway`]), and the built-in simulated one.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use billing_contract::{BillingError, Money};
use uuid::Uuid;

/// A payment provider. Billing wraps every call in the configured
/// `billing.gateway_timeout` and treats an error or a late answer as "unavailable, try again
/// later".
///
/// Providers MUST be idempotent per `idempotency_key` (billing passes the order id): a
/// call repeated after a crash or a lost answer moves no money twice.
#[async_trait]
pub trait PaymentGateway: Send + Sync + std::fmt::Debug {
    /// Takes the money: captured, or declined by the provider.
    async fn charge(&self, charge: &GatewayCharge) -> Result<ChargeOutcome, GatewayError>;

    /// Gives a captured payment's money back in full.
    async fn refund(&self, refund: &GatewayRefund) -> Result<RefundOutcome, GatewayError>;
}

/// What billing asks a provider to charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCharge {
    /// The order id: the same key for every attempt at one order's charge.
    pub idempotency_key: Uuid,
    pub amount: Money,
    /// The payment method's token, as the provider issued it.
    pub token: String,
}

/// A provider's definite answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured { provider_ref: String },
    Declined { reason: String },
}

/// What billing asks a provider to refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRefund {
    /// The order id.
    pub idempotency_key: Uuid,
    /// The provider's reference of the captured payment.
    pub provider_ref: String,
    pub amount: Money,
}

/// A provider's answer to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOutcome {
    /// The provider's reference of the refund.
    pub provider_ref: String,
}

/// A provider call that failed without a definite answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The provider failed in a way worth retrying later (it moved no money).
    #[error("{0}")]
    Transient(String),
}

/// The `simulated` gateway: deterministic on the token, like a provider's test cards.
///
/// | token | answer |
/// |---|---|
/// | `tok_visa` | captured, reference `sim_<uuid>` |
/// | `tok_declined` | declined (`card declined`) |
/// | `tok_error` | a transient failure (retryable) |
/// | `tok_slow` | captured, after the slow delay (10 s by default) |
/// | anything else | declined (`unknown test token`) |
///
/// Refunds always succeed. Like a real provider honouring an idempotency key, it answers
/// the same reference for every attempt at one order.
#[derive(Debug, Clone)]
pub struct SimulatedGateway {
    slow_delay: Duration,
}

impl SimulatedGateway {
    /// How long `tok_slow` takes by default.
    pub const SLOW_DELAY: Duration = Duration::from_secs(10);

    /// A gateway whose `tok_slow` answers after `slow_delay` (tests use a short one).
    pub fn new(slow_delay: Duration) -> Self {
        Self { slow_delay }
    }
}

impl Default for SimulatedGateway {
    fn default() -> Self {
        Self::new(Self::SLOW_DELAY)
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn charge(&self, charge: &GatewayCharge) -> Result<ChargeOutcome, GatewayError> {
        let captured = || ChargeOutcome::Captured {
            provider_ref: format!("sim_{}", charge.idempotency_key),
        };
        match charge.token.as_str() {
            "tok_visa" => Ok(captured()),
            "tok_declined" => Ok(ChargeOutcome::Declined {
                reason: "card declined".into(),
            }),
            "tok_error" => Err(GatewayError::Transient(
                "the simulated provider failed (tok_error); try again later".into(),
            )),
            "tok_slow" => {
                tokio::time::sleep(self.slow_delay).await;
                Ok(captured())
            }
            _ => Ok(ChargeOutcome::Declined {
                reason: "unknown test token".into(),
            }),
        }
    }

    async fn refund(&self, refund: &GatewayRefund) -> Result<RefundOutcome, GatewayError> {
        Ok(RefundOutcome {
            provider_ref: format!("sim_refund_{}", refund.idempotency_key),
        })
    }
}

/// Runs a gateway call within `limit`: a failure or a late answer is
/// [`BillingError::Unavailable`].
pub(crate) async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, GatewayError>>,
) -> Result<T, BillingError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(GatewayError::Transient(reason))) => Err(BillingError::Unavailable(format!(
            "the payment gateway failed: {reason}"
        ))),
        Err(_elapsed) => Err(BillingError::Unavailable(format!(
            "the payment gateway did not answer within {limit:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn charge(token: &str) -> GatewayCharge {
        GatewayCharge {
            idempotency_key: Uuid::new_v4(),
            amount: Money::new(500, "EUR"),
            token: token.into(),
        }
    }

    #[tokio::test]
    async fn tok_visa_is_captured_with_a_sim_reference() {
        let request = charge("tok_visa");
        let outcome = SimulatedGateway::default().charge(&request).await;
        let Ok(ChargeOutcome::Captured { provider_ref }) = outcome else {
            panic!("captured: {outcome:?}");
        };
        let uuid = provider_ref.strip_prefix("sim_").expect("sim_ prefix");
        assert_eq!(Uuid::parse_str(uuid).ok(), Some(request.idempotency_key));
    }

    #[tokio::test]
    async fn the_same_order_gets_the_same_reference() {
        let gateway = SimulatedGateway::default();
        let request = charge("tok_visa");
        assert_eq!(
            gateway.charge(&request).await,
            gateway.charge(&request).await
        );
    }

    #[tokio::test]
    async fn tok_declined_and_unknown_tokens_are_declined() {
        let gateway = SimulatedGateway::default();
        assert_eq!(
            gateway.charge(&charge("tok_declined")).await,
            Ok(ChargeOutcome::Declined {
                reason: "card declined".into()
            })
        );
        assert_eq!(
            gateway.charge(&charge("tok_mastercard")).await,
            Ok(ChargeOutcome::Declined {
                reason: "unknown test token".into()
            })
        );
    }

    #[tokio::test]
    async fn tok_error_fails_transiently() {
        let outcome = SimulatedGateway::default()
            .charge(&charge("tok_error"))
            .await;
        assert!(
            matches!(outcome, Err(GatewayError::Transient(_))),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn tok_slow_is_captured_after_the_slow_delay() {
        let gateway = SimulatedGateway::new(Duration::from_millis(100));
        let started = Instant::now();
        let outcome = gateway.charge(&charge("tok_slow")).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(
            matches!(outcome, Ok(ChargeOutcome::Captured { .. })),
            "{outcome:?}"
        );
        assert_eq!(
            SimulatedGateway::default().slow_delay,
            Duration::from_secs(10)
        );
    }

    #[tokio::test]
    async fn refunds_always_succeed() {
        let refund = GatewayRefund {
            idempotency_key: Uuid::new_v4(),
            provider_ref: "sim_x".into(),
            amount: Money::new(500, "EUR"),
        };
        let outcome = SimulatedGateway::default().refund(&refund).await;
        assert!(outcome.is_ok_and(|answer| answer.provider_ref.starts_with("sim_refund_")),);
    }

    #[tokio::test]
    async fn a_call_beyond_the_timeout_is_unavailable_without_waiting_for_it() {
        let gateway = SimulatedGateway::new(Duration::from_secs(5));
        let started = Instant::now();
        let outcome = within(
            Duration::from_millis(50),
            gateway.charge(&charge("tok_slow")),
        )
        .await;
        assert!(
            matches!(&outcome, Err(BillingError::Unavailable(reason)) if reason.contains("did not answer")),
            "{outcome:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "gave up at the timeout"
        );
    }

    #[tokio::test]
    async fn a_slow_call_within_the_timeout_answers() {
        let gateway = SimulatedGateway::new(Duration::from_millis(50));
        let outcome = within(Duration::from_secs(2), gateway.charge(&charge("tok_slow"))).await;
        assert!(
            matches!(outcome, Ok(ChargeOutcome::Captured { .. })),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_transient_failure_is_unavailable() {
        let gateway = SimulatedGateway::default();
        let outcome = within(Duration::from_secs(1), gateway.charge(&charge("tok_error"))).await;
        assert!(
            matches!(&outcome, Err(BillingError::Unavailable(reason)) if reason.contains("tok_error")),
            "{outcome:?}"
        );
    }
}
