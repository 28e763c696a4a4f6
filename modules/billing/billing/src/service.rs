use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use billing_contract::{
    Billing, BillingError, BillingSettings, ChargeRequest, Payment, PaymentCaptured,
    PaymentDeclined, PaymentRefunded, PaymentStatus, event_types,
};
use chassis::db::{Database, DbConnection, DbError, is_unique_violation};
use chassis::events::{Envelope, Events};
use chassis::page::{Page, PageRequest};
use chrono::{Datelike, NaiveDateTime, TimeDelta};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::domain::{Invoice, invoice_number, validate_charge};
use crate::error::Error;
use crate::gateway::{
    self, ChargeOutcome, GatewayCharge, GatewayRefund, PaymentGateway, SimulatedGateway,
};
use crate::repository::{self as repo, InvoiceRow, Stage, StoredPayment};

/// Billing's behaviour: the [`Billing`] port other modules call (charge, refund), and the
/// admin reads behind its public routes.
///
/// A charge is idempotent per order, also under concurrent calls and crashes:
/// 1. in a transaction of its own, it records the payment as `pending` (the order id is
///    unique: of concurrent first calls, one records it, the others find it);
/// 2. it calls the gateway outside any transaction, within `billing.gateway_timeout`, with
///    the order id as the provider's idempotency key;
/// 3. in one transaction it settles the payment — `captured` with its invoice and
///    `billing.payment_captured`, or `declined` with `billing.payment_declined`.
///
/// A call that finds the payment settled answers it. One that finds it pending answers
/// `Unavailable` while an attempt is in flight, and takes the charge over when the last
/// attempt ended without an answer (gateway error or timeout) or began more than
/// `gateway_timeout` ago (its process crashed). Steps 2 and 3 run in a task of their own,
/// so an attempt runs to its end even when its caller stops waiting.
#[derive(Debug, Clone)]
pub struct BillingService {
    db: Database,
    currency: String,
    gateway: Arc<dyn PaymentGateway>,
    gateway_timeout: Duration,
}

/// Adds an event about `order_id` to the transaction's outbox. Billing's events are keyed
/// on the order id: one payment per order, and consumers follow orders.
fn raise(
    events: &mut Events,
    event_type: &str,
    order_id: Uuid,
    payload: &impl serde::Serialize,
) -> Result<(), Error> {
    let event = Envelope::new(billing_contract::MODULE, event_type, order_id, payload)
        .map_err(|error| Error::Database(DbError::Encoding(error.to_string())))?;
    events.push(event);
    Ok(())
}

/// What the first step of a charge found.
enum Begun {
    /// The payment is settled: the answer.
    Settled(Payment),
    /// This call goes to the gateway for the pending payment, its attempt started at this
    /// time.
    Attempt(StoredPayment, NaiveDateTime),
}

fn in_progress() -> Error {
    Error::Port(BillingError::Unavailable(
        "a charge for this order is in progress".into(),
    ))
}

/// Whether a write failed only because a concurrent call inserted the same key first.
fn lost_race(error: &Error) -> bool {
    matches!(error, Error::Database(DbError::Query(error)) if is_unique_violation(error))
}

/// The payment of `order_id`, as stored now.
fn stored(conn: &mut DbConnection, order_id: Uuid) -> Result<StoredPayment, Error> {
    repo::find_payment(conn, order_id)?.ok_or_else(|| {
        BillingError::Internal(format!("the payment of order {order_id} vanished")).into()
    })
}

/// The settled payment of `order_id`, as stored now.
fn current(conn: &mut DbConnection, order_id: Uuid) -> Result<Payment, Error> {
    stored(conn, order_id)?.settled().ok_or_else(in_progress)
}

fn task_failed(error: tokio::task::JoinError) -> BillingError {
    BillingError::Internal(format!("the payment attempt failed: {error}"))
}

impl BillingService {
    /// `currency` is the shop's one currency (`shop.currency`); `settings` is the
    /// validated `[billing]` section (its only gateway is `simulated`).
    pub fn new(db: Database, currency: impl Into<String>, settings: &BillingSettings) -> Self {
        Self::with_gateway(
            db,
            currency,
            settings,
            Arc::new(SimulatedGateway::default()),
        )
    }

    /// Like [`BillingService::new`], with another payment gateway.
    pub fn with_gateway(
        db: Database,
        currency: impl Into<String>,
        settings: &BillingSettings,
        gateway: Arc<dyn PaymentGateway>,
    ) -> Self {
        Self {
            db,
            currency: currency.into(),
            gateway,
            gateway_timeout: settings.gateway_timeout,
        }
    }

    /// Settled payments in creation order, of one order if `order_id` is given.
    pub async fn payments(
        &self,
        order_id: Option<Uuid>,
        page: PageRequest,
    ) -> Result<Page<Payment>, Error> {
        self.db
            .read(move |conn| {
                let rows = repo::list_payments(
                    conn,
                    order_id,
                    page.after.as_deref(),
                    i64::from(page.limit) + 1,
                )?;
                let rows = Page::from_rows(rows, page.limit, |row| row.id.clone());
                let mut items = Vec::with_capacity(rows.items.len());
                for row in rows.items {
                    items.extend(StoredPayment::try_from(row)?.settled());
                }
                Ok(Page {
                    items,
                    next_cursor: rows.next_cursor,
                })
            })
            .await
    }

    pub async fn invoice(&self, id: Uuid) -> Result<Invoice, Error> {
        self.db
            .read(move |conn| {
                repo::find_invoice(conn, id)?
                    .map(InvoiceRow::into_invoice)
                    .ok_or(Error::InvoiceNotFound(id))
            })
            .await
    }

    /// The invoice issued for an order's payment, if it was captured.
    pub async fn invoice_of_order(&self, order_id: Uuid) -> Result<Option<Invoice>, Error> {
        self.db
            .read(move |conn| {
                Ok(repo::find_invoice_of_order(conn, order_id)?.map(InvoiceRow::into_invoice))
            })
            .await
    }

    /// Step 1 of a charge: record it as pending, or (`look_first`) find it.
    async fn begin(&self, request: &ChargeRequest, look_first: bool) -> Result<Begun, Error> {
        let order_id = request.order_id;
        let amount = request.amount.clone();
        let customer_email = request.customer_email.clone();
        let stale_after = TimeDelta::from_std(self.gateway_timeout).unwrap_or(TimeDelta::MAX);
        self.db
            .write_with_events(move |conn, at_commit| {
                let at = repo::now();
                let found = if look_first {
                    repo::find_payment(conn, order_id)?
                } else {
                    None
                };
                let Some(stored) = found else {
                    // A first try does not look: a payment or a void there breaks the
                    // payment's or the decision's key at the batch's end, where both rows
                    // go in, and the next try, looking, finds it.
                    if look_first && repo::is_voided(conn, order_id)? {
                        return Err(BillingError::ChargeVoided { order_id }.into());
                    }
                    let pending = repo::PendingPayment::new(
                        Uuid::now_v7(),
                        order_id,
                        &amount,
                        &customer_email,
                        at,
                    );
                    let stored = pending.stored();
                    at_commit.insert_at_commit(pending);
                    at_commit.insert_at_commit(repo::ChargeDecision::charge(order_id, at));
                    return Ok(Begun::Attempt(stored, at));
                };
                if stored.amount != amount {
                    return Err(BillingError::ChargeConflict { order_id }.into());
                }
                if stored.stage != Stage::Pending {
                    return stored.settled().map(Begun::Settled).ok_or_else(in_progress);
                }
                let stale_before = at
                    .checked_sub_signed(stale_after)
                    .unwrap_or(NaiveDateTime::MIN);
                if repo::claim_attempt(conn, order_id, at, stale_before)? {
                    Ok(Begun::Attempt(stored, at))
                } else {
                    Err(in_progress())
                }
            })
            .await
    }

    /// Steps 2 and 3 of a charge: ask the gateway, settle the payment.
    async fn attempt(
        &self,
        request: ChargeRequest,
        pending: StoredPayment,
        started_at: NaiveDateTime,
    ) -> Result<Payment, BillingError> {
        let order_id = request.order_id;
        let charge = GatewayCharge {
            idempotency_key: order_id,
            amount: request.amount,
            token: request.token,
        };
        let outcome = gateway::within(self.gateway_timeout, self.gateway.charge(&charge)).await;
        let settled = match outcome {
            Ok(ChargeOutcome::Captured { provider_ref }) => {
                self.settle(Some(pending), order_id, Answer::Captured(provider_ref))
                    .await
            }
            Ok(ChargeOutcome::Declined { reason }) => {
                self.settle(Some(pending), order_id, Answer::Declined(reason))
                    .await
            }
            Err(error) => {
                tracing::warn!(%order_id, %error, "the payment gateway gave no answer");
                self.release(order_id, started_at).await;
                return Err(error);
            }
        };
        settled.map_err(BillingError::from)
    }

    /// Lets the next call try again at once, after an attempt without an answer. Should
    /// this fail, the attempt is taken over once it is `gateway_timeout` old.
    async fn release(&self, order_id: Uuid, started_at: NaiveDateTime) {
        let released = self
            .db
            .write(move |conn| {
                repo::release_attempt(conn, order_id, started_at).map_err(Error::from)
            })
            .await;
        if let Err(error) = released {
            tracing::warn!(%order_id, %error, "cannot release the charge attempt");
        }
    }

    /// Step 3: settles the pending payment of `order_id` — `pending`, when the caller holds
    /// it. On PostgreSQL two concurrent captures that both issue the year's first invoice
    /// meet a unique violation on its counter; the loser retries once, when the counter
    /// exists.
    async fn settle(
        &self,
        pending: Option<StoredPayment>,
        order_id: Uuid,
        answer: Answer,
    ) -> Result<Payment, Error> {
        let settled = match self
            .try_settle(pending.clone(), order_id, answer.clone())
            .await
        {
            Err(error) if lost_race(&error) => self.try_settle(pending, order_id, answer).await,
            other => other,
        };
        match settled {
            // No longer pending: a concurrent attempt settled it first.
            Err(Error::Database(DbError::NotApplied)) => {
                self.db.read(move |conn| current(conn, order_id)).await
            }
            other => other,
        }
    }

    async fn try_settle(
        &self,
        pending: Option<StoredPayment>,
        order_id: Uuid,
        answer: Answer,
    ) -> Result<Payment, Error> {
        self.db
            .write_with_events(move |conn, events| {
                let pending = match &pending {
                    Some(pending) => pending.clone(),
                    None => {
                        let stored = stored(conn, order_id)?;
                        if stored.stage != Stage::Pending {
                            return current(conn, order_id);
                        }
                        stored
                    }
                };
                let at = repo::now();
                let settlement = match &answer {
                    Answer::Captured(provider_ref) => {
                        repo::Settlement::captured(order_id, provider_ref, Uuid::now_v7(), at)
                    }
                    Answer::Declined(reason) => repo::Settlement::declined(order_id, reason, at),
                };
                let stored = settlement.settled(pending);
                events.update_at_commit(settlement);
                let customer_email = stored.customer_email.clone();
                let payment = stored.settled().ok_or_else(in_progress)?;
                match &answer {
                    Answer::Captured(_) => {
                        let invoice_id = payment.invoice_id.ok_or_else(|| {
                            BillingError::Internal(format!(
                                "the capture of order {order_id} recorded no invoice"
                            ))
                        })?;
                        // The year's counter row, which every capture locks until it
                        // commits, is held for as few round trips as can be: the payment's
                        // settlement and the invoice's row go in at the batch's end.
                        let invoice = issue_invoice(conn, events, invoice_id, &payment, at)?;
                        let captured = PaymentCaptured {
                            payment_id: payment.id,
                            order_id,
                            amount: payment.amount.clone(),
                            invoice_id: invoice.id,
                            invoice_number: invoice.number,
                            customer_email,
                        };
                        raise(events, event_types::PAYMENT_CAPTURED, order_id, &captured)?;
                    }
                    Answer::Declined(reason) => {
                        let declined = PaymentDeclined {
                            payment_id: payment.id,
                            order_id,
                            amount: payment.amount.clone(),
                            reason: reason.clone(),
                            customer_email,
                        };
                        raise(events, event_types::PAYMENT_DECLINED, order_id, &declined)?;
                    }
                }
                Ok(payment)
            })
            .await
    }

    /// A refund asked for a payment still pending: the payer's side is compensating (an
    /// order past its deadline), so no charge may go through any more. A running attempt
    /// is waited for (`Unavailable`); an idle one — its last attempt failed, or crashed
    /// more than `gateway_timeout` ago — is settled as declined, so that any later charge
    /// answers that and the compensation can go on.
    async fn abandon(&self, order_id: Uuid) -> Result<Payment, BillingError> {
        let started = self
            .db
            .read(move |conn| repo::attempt_started_at(conn, order_id).map_err(Error::from))
            .await?;
        let stale_after = TimeDelta::from_std(self.gateway_timeout).unwrap_or(TimeDelta::MAX);
        if started.is_some_and(|started| repo::now() - started < stale_after) {
            return Err(in_progress().into());
        }
        let reason =
            "abandoned: the order was compensated before any charge went through".to_owned();
        let payment = self
            .settle(None, order_id, Answer::Declined(reason))
            .await?;
        match payment.status {
            // A concurrent attempt captured it first: it is refunded like any capture.
            PaymentStatus::Captured => Billing::refund(self, order_id).await,
            status => Err(BillingError::NotRefundable { order_id, status }),
        }
    }

    /// A refund of an order billing has not seen: the caller gave the order up, so a
    /// charge of it arriving later must not be taken. Records the void unless a first
    /// charge got in meanwhile, whose payment it then answers, to be refunded as usual.
    async fn void(&self, order_id: Uuid) -> Result<Option<StoredPayment>, BillingError> {
        self.db
            .write(move |conn| {
                if let Some(stored) = repo::find_payment(conn, order_id)? {
                    return Ok(Some(stored));
                }
                if repo::insert_void(conn, order_id, repo::now())? {
                    tracing::info!(%order_id, "order voided: refunded before any charge");
                    return Ok(None);
                }
                // Decided before: by a first charge that committed meanwhile (its payment
                // is there now), or by an earlier void.
                Ok::<_, Error>(repo::find_payment(conn, order_id)?)
            })
            .await
            .map_err(BillingError::from)
    }

    /// The refund of a captured payment: the gateway, then the payment and its event.
    async fn give_back(&self, stored: StoredPayment) -> Result<Payment, BillingError> {
        let order_id = stored.order_id;
        let request = GatewayRefund {
            idempotency_key: order_id,
            provider_ref: stored.provider_ref.clone().unwrap_or_default(),
            amount: stored.amount.clone(),
        };
        let refunded = gateway::within(self.gateway_timeout, self.gateway.refund(&request)).await?;
        self.db
            .write_with_events(move |conn, events| {
                let at = repo::now();
                if !repo::mark_refunded(conn, order_id, at)? {
                    // A concurrent refund came first.
                    return current(conn, order_id);
                }
                repo::insert_refund(conn, &stored, &refunded.provider_ref, at)?;
                let refund = PaymentRefunded {
                    payment_id: stored.id,
                    order_id,
                    amount: stored.amount.clone(),
                    customer_email: stored.customer_email.clone(),
                };
                raise(events, event_types::PAYMENT_REFUNDED, order_id, &refund)?;
                current(conn, order_id)
            })
            .await
            .map_err(BillingError::from)
    }
}

/// The gateway's definite answer to a charge.
#[derive(Debug, Clone)]
enum Answer {
    Captured(String),
    Declined(String),
}

/// Issues the invoice of a payment captured in this transaction. Its number is taken now:
/// from the year's counter by the transaction's first capture, from those before it in
/// the same transaction by the next (`repo::InvoiceNumbersTaken`). Its row, which nothing
/// reads before the batch commits, goes in with the batch's others.
fn issue_invoice(
    conn: &mut DbConnection,
    at_commit: &mut Events,
    id: Uuid,
    payment: &Payment,
    at: NaiveDateTime,
) -> Result<Invoice, Error> {
    let year = at.year();
    let taken = at_commit
        .transaction_memo::<repo::InvoiceNumbersTaken>()
        .take_next(year);
    let number = match taken {
        Some(number) => {
            at_commit.update_at_commit(repo::InvoiceCounterAdvance { year });
            number
        }
        None => {
            let number = repo::next_invoice_number(conn, year)?;
            at_commit
                .transaction_memo::<repo::InvoiceNumbersTaken>()
                .took(year, number);
            number
        }
    };
    let row = InvoiceRow {
        id: id.to_string(),
        number: invoice_number(year, number),
        payment_id: payment.id.to_string(),
        order_id: payment.order_id.to_string(),
        amount: payment.amount.amount,
        currency: payment.amount.currency.clone(),
        issued_at: at,
    };
    at_commit.insert_at_commit(row.clone());
    Ok(row.into_invoice())
}

#[async_trait]
impl Billing for BillingService {
    async fn charge(&self, request: ChargeRequest) -> Result<Payment, BillingError> {
        validate_charge(&request, &self.currency)?;
        // The first try inserts the payment without looking for one: a first charge is the
        // common call, and the look is a round trip on PostgreSQL. A payment already there
        // (a repeated charge, or a concurrent first one that committed first) fails the
        // insert on its key, and a void already there fails the batch's insert of the
        // charge's decision: the next try looks.
        let mut begun = self.begin(&request, false).await;
        // Looking, then, at most twice: a first charge can lose to a concurrent one, then
        // again to a void that committed while it looked.
        for _ in 0..2 {
            if matches!(&begun, Err(error) if lost_race(error)) {
                begun = self.begin(&request, true).await;
            }
        }
        let (pending, started_at) = match begun? {
            Begun::Settled(payment) => return Ok(payment),
            Begun::Attempt(pending, started_at) => (pending, started_at),
        };
        let service = self.clone();
        // In the caller's span: the payment's events belong to the order's trace.
        tokio::spawn(
            async move { service.attempt(request, pending, started_at).await }.in_current_span(),
        )
        .await
        .map_err(task_failed)?
    }

    async fn refund(&self, order_id: Uuid) -> Result<Payment, BillingError> {
        let found = self
            .db
            .read(move |conn| repo::find_payment(conn, order_id).map_err(Error::from))
            .await?;
        let stored = match found {
            Some(stored) => stored,
            None => match self.void(order_id).await? {
                Some(stored) => stored,
                None => return Err(BillingError::PaymentNotFound(order_id)),
            },
        };
        match stored.stage {
            Stage::Settled(PaymentStatus::Captured) => {}
            Stage::Settled(status @ PaymentStatus::Declined) => {
                return Err(BillingError::NotRefundable { order_id, status });
            }
            Stage::Settled(PaymentStatus::Refunded) => {
                return stored.settled().ok_or_else(|| in_progress().into());
            }
            Stage::Pending => return self.abandon(order_id).await,
        }
        let service = self.clone();
        tokio::spawn(async move { service.give_back(stored).await }.in_current_span())
            .await
            .map_err(task_failed)?
    }
}
