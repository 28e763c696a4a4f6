//! The order saga (spec §4) as a persisted state machine.
//!
//! Every call the saga makes to the catalog or billing is idempotent per order id, so any
//! process can resume any saga at its recorded step after a crash: a forward step is
//! recorded only with the order (`reserve`) or when it is postponed, a compensation step
//! before it is attempted. One process at a time runs a saga: it holds a lease on
//! the order row. A step whose peer is unreachable is postponed with backoff; past
//! `orders.saga_deadline` a forward step turns to compensation (refund, release) and the
//! order ends `rejected` / `dependency_unavailable`. Compensation never gives up.

use std::sync::Arc;
use std::time::Duration;

use billing_contract::{Billing, BillingError, ChargeRequest, PaymentStatus};
use catalog_contract::{Catalog, CatalogError, ReservationStatus, StockLine};
use chassis::db::{Database, utc_now};
use chassis::events::Envelope;
use chrono::NaiveDateTime;
use orders_contract::{
    Order, OrderCancelled, OrderConfirmed, OrderRejected, OrderStatus, OrdersSettings,
    RejectionReason, event_types,
};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::domain::Step;
use crate::error::Error;
use crate::repository::{self as repo, LineRow, OrderRow};

/// What an attempted step leads to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Record this step (and the reason compensation will end with) and go on.
    Next(Step, Option<RejectionReason>),
    /// End the saga with this status (and this rejection reason, if rejected).
    Finish(OrderStatus, Option<RejectionReason>),
    /// A peer could not be reached: try the same step again later.
    RetryLater(String),
}

/// Runs order sagas for one process.
pub(crate) struct Saga {
    db: Database,
    catalog: Arc<dyn Catalog>,
    billing: Arc<dyn Billing>,
    settings: OrdersSettings,
    /// Names this process in the lease tokens of its runs.
    process: String,
}

impl std::fmt::Debug for Saga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga")
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

impl Saga {
    pub(crate) fn new(
        db: Database,
        catalog: Arc<dyn Catalog>,
        billing: Arc<dyn Billing>,
        settings: OrdersSettings,
    ) -> Self {
        Self {
            db,
            catalog,
            billing,
            settings,
            process: format!("orders-{}", Uuid::new_v4()),
        }
    }

    /// A fresh lease token for one run of one saga. The lease belongs to a run, not to the
    /// process: two tasks of one process (a cancel and its retry, the recovery worker)
    /// must not both run a saga, so a run never takes over a lease it did not take itself.
    pub(crate) fn new_run(&self) -> String {
        format!("{}/{}", self.process, Uuid::new_v4().simple())
    }

    pub(crate) fn lease_until(&self) -> NaiveDateTime {
        utc_now()
            + chrono::Duration::from_std(self.settings.saga_lease)
                .unwrap_or(chrono::Duration::seconds(30))
    }

    pub(crate) fn deadline(&self) -> NaiveDateTime {
        utc_now()
            + chrono::Duration::from_std(self.settings.saga_deadline)
                .unwrap_or(chrono::Duration::minutes(5))
    }

    /// Runs the saga of `id` until it ends or has to wait for a peer; answers the order if
    /// this run ended it. Does nothing if another process holds the saga or no saga work
    /// remains.
    pub(crate) async fn run(&self, id: Uuid) -> Result<Option<Order>, Error> {
        let run = self.new_run();
        let owner = run.clone();
        let lease_until = self.lease_until();
        let claimed = self
            .db
            .write(move |conn| repo::claim_saga(conn, id, &owner, lease_until).map_err(Error::from))
            .await?;
        if !claimed {
            return Ok(None);
        }
        self.run_claimed(id, run).await
    }

    /// Runs the saga of `id`, whose lease the run `run` has just taken.
    pub(crate) async fn run_claimed(&self, id: Uuid, run: String) -> Result<Option<Order>, Error> {
        let (row, lines) = self
            .db
            .read(move |conn| {
                let row = repo::find_row(conn, id)?.ok_or(Error::OrderNotFound(id))?;
                let lines = row.lines()?;
                Ok::<_, Error>((row, lines))
            })
            .await?;
        self.drive(row, lines, &run).await
    }

    /// Runs the saga of an order this process has just stored (with the lease of a run of
    /// its own), as stored.
    pub(crate) async fn run_new(
        &self,
        row: OrderRow,
        lines: Vec<LineRow>,
    ) -> Result<Option<Order>, Error> {
        let run = row.saga_owner.clone().unwrap_or_default();
        self.drive(row, lines, &run).await
    }

    async fn drive(
        &self,
        mut row: OrderRow,
        lines: Vec<LineRow>,
        run: &str,
    ) -> Result<Option<Order>, Error> {
        let id = row.order_id();
        // This process holds the saga from here on, so the row read above stays true
        // except for what `record_step` writes, which is mirrored below.
        loop {
            let Some(step) = row.step() else {
                return Ok(None);
            };
            // One span per step, so that an order's trace shows each step with its port
            // calls and the events it wrote.
            let span = tracing::info_span!(
                "saga step",
                otel.name = %format_args!("saga {}", step.as_str()),
                order_id = %id,
            );
            if let Some(done) = self
                .advance(step, &mut row, &lines, run)
                .instrument(span)
                .await?
            {
                return Ok(done);
            }
        }
    }

    /// Takes `step` once: `Some(answer)` when the saga has ended or stopped for now, `None`
    /// when it moved on to its next step (mirrored into `row`).
    async fn advance(
        &self,
        step: Step,
        row: &mut OrderRow,
        lines: &[LineRow],
        run: &str,
    ) -> Result<Option<Option<Order>>, Error> {
        let id = row.order_id();
        let outcome = match step.compensation_after_deadline() {
            Some(compensation) if utc_now() > row.saga_deadline => {
                tracing::warn!(order_id = %id, step = step.as_str(), "saga past its deadline: compensating");
                Outcome::Next(compensation, Some(RejectionReason::DependencyUnavailable))
            }
            _ => self.attempt(step, row, lines).await,
        };
        match outcome {
            Outcome::Next(next, reason) => {
                // A forward step is not written (see `Step`): on PostgreSQL each write is
                // round trips every order would pay for (BENCHMARKS.md).
                if !next.is_forward() && !self.record_step(id, run, next, reason).await? {
                    return Ok(Some(None));
                }
                row.saga_step = Some(next.as_str().to_owned());
                row.saga_attempts = 0;
                if let Some(reason) = reason {
                    row.rejection_reason = Some(reason.as_str().to_owned());
                }
                Ok(None)
            }
            Outcome::Finish(status, reason) => self
                .finish(row, run, status, reason, lines.to_vec())
                .await
                .map(Some),
            Outcome::RetryLater(error) => {
                self.postpone(id, run, step, row.saga_attempts, error)
                    .await?;
                Ok(Some(None))
            }
        }
    }

    async fn attempt(&self, step: Step, row: &OrderRow, lines: &[LineRow]) -> Outcome {
        let id = row.order_id();
        match step {
            Step::Reserve => {
                let lines: Vec<StockLine> = lines
                    .iter()
                    .map(|line| StockLine {
                        product_id: Uuid::parse_str(&line.product_id).unwrap_or_default(),
                        quantity: u32::try_from(line.quantity).unwrap_or(u32::MAX),
                    })
                    .collect();
                match self.catalog.reserve(id, &lines).await {
                    Ok(_) => Outcome::Next(Step::Charge, None),
                    // All or nothing: nothing is held, nothing to compensate.
                    Err(CatalogError::OutOfStock { .. } | CatalogError::ProductNotFound(_)) => {
                        Outcome::Finish(OrderStatus::Rejected, Some(RejectionReason::OutOfStock))
                    }
                    Err(CatalogError::ReservationConflict {
                        status: ReservationStatus::Released,
                        ..
                    }) => Outcome::Finish(
                        OrderStatus::Rejected,
                        Some(RejectionReason::DependencyUnavailable),
                    ),
                    Err(error) => Outcome::RetryLater(error.to_string()),
                }
            }
            Step::Charge => {
                let request = ChargeRequest {
                    order_id: id,
                    amount: row.total(),
                    token: row.payment_token.clone().unwrap_or_default(),
                    customer_email: row.customer_email.clone(),
                };
                match self.billing.charge(request).await {
                    Ok(payment) if payment.status == PaymentStatus::Captured => {
                        Outcome::Next(Step::Commit, None)
                    }
                    Ok(payment) if payment.status == PaymentStatus::Declined => {
                        Outcome::Next(Step::Release, Some(RejectionReason::PaymentDeclined))
                    }
                    // Refunded already: an earlier compensation ran; finish it.
                    Ok(_) => {
                        Outcome::Next(Step::Release, Some(RejectionReason::DependencyUnavailable))
                    }
                    Err(error @ (BillingError::Unavailable(_) | BillingError::Internal(_))) => {
                        Outcome::RetryLater(error.to_string())
                    }
                    // The charge itself is refused: the payment is declined.
                    // Voided: this order was refunded (given up) before billing saw this
                    // charge, which is an old attempt arriving late; finish the compensation.
                    Err(BillingError::ChargeVoided { .. }) => {
                        Outcome::Next(Step::Release, Some(RejectionReason::DependencyUnavailable))
                    }
                    Err(_) => Outcome::Next(Step::Release, Some(RejectionReason::PaymentDeclined)),
                }
            }
            Step::Commit => match self.catalog.commit(id).await {
                Ok(_) => Outcome::Finish(OrderStatus::Confirmed, None),
                Err(error) => Outcome::RetryLater(error.to_string()),
            },
            Step::Refund => match self.billing.refund(id).await {
                Ok(_)
                | Err(BillingError::PaymentNotFound(_) | BillingError::NotRefundable { .. }) => {
                    Outcome::Next(Step::Release, None)
                }
                Err(error) => Outcome::RetryLater(error.to_string()),
            },
            Step::Release => match self.catalog.release(id).await {
                Ok(_)
                | Err(CatalogError::ReservationConflict {
                    status: ReservationStatus::Restocked,
                    ..
                }) => Outcome::Finish(OrderStatus::Rejected, None),
                // The commit went through after all (its answer was lost before the
                // deadline): the stock was sold, so it goes back on hand.
                Err(CatalogError::ReservationConflict {
                    status: ReservationStatus::Committed,
                    ..
                }) => match self.catalog.restock(id).await {
                    Ok(_) => Outcome::Finish(OrderStatus::Rejected, None),
                    Err(error) => Outcome::RetryLater(error.to_string()),
                },
                Err(error) => Outcome::RetryLater(error.to_string()),
            },
            Step::CancelRefund => match self.billing.refund(id).await {
                Ok(_)
                | Err(BillingError::PaymentNotFound(_) | BillingError::NotRefundable { .. }) => {
                    Outcome::Next(Step::CancelRestock, None)
                }
                Err(error) => Outcome::RetryLater(error.to_string()),
            },
            Step::CancelRestock => match self.catalog.restock(id).await {
                Ok(_) => Outcome::Finish(OrderStatus::Cancelled, None),
                Err(error) => Outcome::RetryLater(error.to_string()),
            },
        }
    }

    async fn record_step(
        &self,
        id: Uuid,
        run: &str,
        step: Step,
        reason: Option<RejectionReason>,
    ) -> Result<bool, Error> {
        let owner = run.to_owned();
        let lease_until = self.lease_until();
        self.db
            .write(move |conn| {
                repo::set_step(conn, id, &owner, step, reason, lease_until).map_err(Error::from)
            })
            .await
    }

    /// Postpones `step`, whose attempt this is the `attempts + 1`th, recording it as the
    /// step to resume at: a forward step reached without being written is written here,
    /// where a write happens anyway, so that the retry does not call the earlier steps again.
    async fn postpone(
        &self,
        id: Uuid,
        run: &str,
        step: Step,
        attempts: i64,
        error: String,
    ) -> Result<(), Error> {
        let owner = run.to_owned();
        let next_at = utc_now() + backoff(attempts);
        tracing::info!(order_id = %id, step = step.as_str(), attempts = attempts + 1, %error, "saga step postponed");
        self.db
            .write(move |conn| {
                repo::postpone(conn, id, &owner, step, attempts + 1, next_at, &error)
                    .map_err(Error::from)
            })
            .await
    }

    /// Ends the saga and raises the order's event, in one transaction; answers the order
    /// as it ended, unless another process held the saga after all. `row` is the order's
    /// row as this run holds it.
    async fn finish(
        &self,
        row: &OrderRow,
        run: &str,
        status: OrderStatus,
        reason: Option<RejectionReason>,
        lines: Vec<LineRow>,
    ) -> Result<Option<Order>, Error> {
        let id = row.order_id();
        let end = repo::SagaEnd::new(id, run, status, reason, utc_now());
        // An order's lines never change, and nobody writes its row while this run holds
        // the saga: the order as it ends is the row held, as the end leaves it.
        let ended = end.ended(row.clone()).into_order(lines);
        let finished = self
            .db
            .write_with_events(move |_conn, events| {
                events.update_at_commit(end.clone());
                let order = ended.clone();
                let event = match status {
                    OrderStatus::Confirmed => Envelope::new(
                        orders_contract::MODULE,
                        event_types::ORDER_CONFIRMED,
                        id,
                        &OrderConfirmed { order },
                    ),
                    OrderStatus::Rejected => Envelope::new(
                        orders_contract::MODULE,
                        event_types::ORDER_REJECTED,
                        id,
                        &OrderRejected { order },
                    ),
                    OrderStatus::Cancelled => Envelope::new(
                        orders_contract::MODULE,
                        event_types::ORDER_CANCELLED,
                        id,
                        &OrderCancelled { order },
                    ),
                    OrderStatus::Pending => return Ok(ended.clone()),
                }
                .map_err(|error| {
                    Error::Database(chassis::db::DbError::Encoding(error.to_string()))
                })?;
                events.push(event);
                Ok::<_, Error>(ended.clone())
            })
            .await;
        let finished = match finished {
            Ok(ended) => ended,
            // The end found the saga held by another run: that run ends it.
            Err(Error::Database(chassis::db::DbError::NotApplied)) => {
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let reason = reason.map_or("none", RejectionReason::as_str);
        metrics::counter!(
            "bazaar_saga_outcomes_total",
            "outcome" => status.as_str(),
            "reason" => reason,
        )
        .increment(1);
        tracing::debug!(order_id = %id, outcome = status.as_str(), reason, "saga ended");
        Ok(Some(finished))
    }
}

/// 200 ms doubling per attempt up to 10 s, with up to a quarter of jitter.
fn backoff(attempts: i64) -> chrono::Duration {
    let exponent = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    let base = Duration::from_millis(200).saturating_mul(2_u32.saturating_pow(exponent));
    let capped = base.min(Duration::from_secs(10));
    let jitter = u64::from(chrono::Utc::now().timestamp_subsec_nanos())
        % (capped.as_millis() as u64 / 4 + 1);
    chrono::Duration::from_std(capped + Duration::from_millis(jitter))
        .unwrap_or(chrono::Duration::seconds(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) >= chrono::Duration::milliseconds(200));
        assert!(backoff(0) <= chrono::Duration::milliseconds(250));
        assert!(backoff(3) >= chrono::Duration::milliseconds(1600));
        assert!(backoff(40) <= chrono::Duration::milliseconds(12_500));
    }
}
