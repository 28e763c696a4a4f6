//! Billing's queries, written once for both backends against `DbConnection`.
//!
//! Every change of a payment's status is one conditional `UPDATE … WHERE status = …`, so
//! that of two concurrent calls that both try to settle (or refund) one payment, exactly
//! one does; the other reads what the winner wrote.

use billing_contract::{Money, Payment, PaymentStatus};
use chassis::db::{DbConnection, DeferredUpdate, Riders, all_changed, update, update_all};
use chassis::per_backend;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use uuid::Uuid;

use crate::domain::Invoice;
use crate::schema::{charge_decisions, invoice_counters, invoices, payments, refunds};

pub(crate) use chassis::db::utc_now as now;

/// The stored status of a payment that is being charged: never shown outside billing.
pub(crate) const PENDING: &str = "pending";

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = payments)]
pub(crate) struct PaymentRow {
    pub(crate) id: String,
    pub(crate) order_id: String,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) status: String,
    pub(crate) provider_ref: Option<String>,
    pub(crate) invoice_id: Option<String>,
    pub(crate) refunded_amount: i64,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) customer_email: String,
}

/// Where a stored payment stands: still being charged, or settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Pending,
    Settled(PaymentStatus),
}

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredPayment {
    pub(crate) stage: Stage,
    pub(crate) id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) amount: Money,
    pub(crate) provider_ref: Option<String>,
    /// Whom the order belongs to, as the first charge named them: for the events.
    pub(crate) customer_email: String,
    invoice_id: Option<Uuid>,
    refunded_amount: i64,
    created_at: NaiveDateTime,
}

impl TryFrom<PaymentRow> for StoredPayment {
    type Error = diesel::result::Error;

    fn try_from(row: PaymentRow) -> QueryResult<Self> {
        let stage = if row.status == PENDING {
            Stage::Pending
        } else {
            Stage::Settled(PaymentStatus::parse(&row.status).ok_or_else(|| {
                diesel::result::Error::DeserializationError(
                    format!("unknown payment status {:?}", row.status).into(),
                )
            })?)
        };
        Ok(Self {
            stage,
            // Ids are written by this module only, always as UUIDs.
            id: Uuid::parse_str(&row.id).unwrap_or_default(),
            order_id: Uuid::parse_str(&row.order_id).unwrap_or_default(),
            amount: Money::new(row.amount, row.currency),
            provider_ref: row.provider_ref,
            customer_email: row.customer_email,
            invoice_id: row.invoice_id.and_then(|id| Uuid::parse_str(&id).ok()),
            refunded_amount: row.refunded_amount,
            created_at: row.created_at,
        })
    }
}

impl StoredPayment {
    /// The payment as the port answers it; `None` while it is pending.
    pub(crate) fn settled(self) -> Option<Payment> {
        let Stage::Settled(status) = self.stage else {
            return None;
        };
        Some(Payment {
            id: self.id,
            order_id: self.order_id,
            refunded_amount: Money::new(self.refunded_amount, self.amount.currency.clone()),
            amount: self.amount,
            status,
            provider_ref: self.provider_ref,
            invoice_id: self.invoice_id,
            created_at: self.created_at.and_utc(),
        })
    }
}

pub(crate) fn find_payment(
    conn: &mut DbConnection,
    order_id: Uuid,
) -> QueryResult<Option<StoredPayment>> {
    per_backend!(conn, |conn| {
        payments::table
            .filter(payments::order_id.eq(order_id.to_string()))
            .select(PaymentRow::as_select())
            .get_result(conn)
            .optional()?
            .map(StoredPayment::try_from)
            .transpose()
    })
}

/// A charge about to be sent to the gateway, its attempt starting at `created_at`. Nothing
/// reads it before its batch commits (the next step, the settlement, is a later write), so
/// it is left to the batch with the charge's [`ChargeDecision`]: a batch of first charges
/// inserts them in one statement on PostgreSQL. A payment of the order there already (a
/// repeated charge, or a concurrent first one that committed first) breaks the order's key
/// at the batch's end, and the charge's next try looks.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = payments)]
pub(crate) struct PendingPayment {
    id: String,
    order_id: String,
    amount: i64,
    currency: String,
    customer_email: String,
    status: &'static str,
    refunded_amount: i64,
    attempt_started_at: Option<NaiveDateTime>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

chassis::deferred_row!(PendingPayment => payments {
    id, order_id, amount, currency, customer_email, status, refunded_amount,
    attempt_started_at, created_at, updated_at
});

impl PendingPayment {
    pub(crate) fn new(
        id: Uuid,
        order_id: Uuid,
        amount: &Money,
        customer_email: &str,
        at: NaiveDateTime,
    ) -> Self {
        Self {
            id: id.to_string(),
            order_id: order_id.to_string(),
            amount: amount.amount,
            currency: amount.currency.clone(),
            customer_email: customer_email.to_owned(),
            status: PENDING,
            refunded_amount: 0,
            attempt_started_at: Some(at),
            created_at: at,
            updated_at: at,
        }
    }

    /// The payment as this row stores it.
    pub(crate) fn stored(&self) -> StoredPayment {
        StoredPayment {
            stage: Stage::Pending,
            id: Uuid::parse_str(&self.id).unwrap_or_default(),
            order_id: Uuid::parse_str(&self.order_id).unwrap_or_default(),
            amount: Money::new(self.amount, self.currency.clone()),
            provider_ref: None,
            customer_email: self.customer_email.clone(),
            invoice_id: None,
            refunded_amount: self.refunded_amount,
            created_at: self.created_at,
        }
    }
}

/// Which came first for an order, its first charge or its void: both insert the order's
/// row, and its key makes the later one fail, once the earlier one committed. A first
/// charge leaves its row to the batch (it is read by nobody before the batch commits, and
/// a void's row already there breaks its key at the batch's end); a void inserts its own
/// at once ([`insert_void`]).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = charge_decisions)]
pub(crate) struct ChargeDecision {
    order_id: String,
    decision: &'static str,
    decided_at: NaiveDateTime,
}

chassis::deferred_row!(ChargeDecision => charge_decisions { order_id, decision, decided_at });

const CHARGE: &str = "charge";
const VOID: &str = "void";

impl ChargeDecision {
    /// The decision a first charge of `order_id` records.
    pub(crate) fn charge(order_id: Uuid, at: NaiveDateTime) -> Self {
        Self {
            order_id: order_id.to_string(),
            decision: CHARGE,
            decided_at: at,
        }
    }
}

/// Takes over a pending charge for a new attempt starting `at`, if no attempt is in
/// flight or the one in flight began before `stale_before` (it crashed); answers whether
/// it did. Of concurrent callers, one wins.
pub(crate) fn claim_attempt(
    conn: &mut DbConnection,
    order_id: Uuid,
    at: NaiveDateTime,
    stale_before: NaiveDateTime,
) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        update(
            payments::table,
            payments::order_id
                .eq(order_id.to_string())
                .and(payments::status.eq(PENDING))
                .and(
                    payments::attempt_started_at
                        .is_null()
                        .or(payments::attempt_started_at.lt(stale_before)),
                ),
            (
                payments::attempt_started_at.eq(Some(at)),
                payments::updated_at.eq(at),
            ),
        )
        .execute(conn)
        .map(|rows| rows == 1)
    })
}

/// Ends the attempt that started at `started_at` without an answer, so that the next
/// call tries again at once.
pub(crate) fn release_attempt(
    conn: &mut DbConnection,
    order_id: Uuid,
    started_at: NaiveDateTime,
) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        update(
            payments::table,
            payments::order_id
                .eq(order_id.to_string())
                .and(payments::status.eq(PENDING))
                .and(payments::attempt_started_at.eq(Some(started_at))),
            (
                payments::attempt_started_at.eq(None::<NaiveDateTime>),
                payments::updated_at.eq(now()),
            ),
        )
        .execute(conn)
        .map(|rows| rows == 1)
    })
}

/// When the pending payment of `order_id` had its current charge attempt start: `None`
/// when no attempt is running (the last one failed and was released).
pub(crate) fn attempt_started_at(
    conn: &mut DbConnection,
    order_id: Uuid,
) -> QueryResult<Option<NaiveDateTime>> {
    per_backend!(conn, |conn| {
        payments::table
            .filter(payments::order_id.eq(order_id.to_string()))
            .filter(payments::status.eq(PENDING))
            .select(payments::attempt_started_at)
            .get_result::<Option<NaiveDateTime>>(conn)
            .optional()
            .map(Option::flatten)
    })
}

/// The gateway's answer to a charge, settling the order's pending payment: left to the
/// batch (`Events::update_at_commit`), so that the payments settled together are one
/// statement on PostgreSQL. The settling write knows the payment (its charge's first step
/// read or wrote it) and answers it as settled without reading it back. A payment no
/// longer pending (a concurrent attempt settled it first) is not changed, and the write
/// that left the settlement gets [`DbError::NotApplied`](chassis::db::DbError::NotApplied).
#[derive(Debug, Clone)]
pub(crate) struct Settlement {
    order_id: String,
    status: PaymentStatus,
    provider_ref: Option<String>,
    reason: Option<String>,
    /// The invoice a capture is issued (inserted in the same transaction).
    invoice_id: Option<String>,
    at: NaiveDateTime,
}

impl Settlement {
    pub(crate) fn captured(
        order_id: Uuid,
        provider_ref: &str,
        invoice_id: Uuid,
        at: NaiveDateTime,
    ) -> Self {
        Self {
            order_id: order_id.to_string(),
            status: PaymentStatus::Captured,
            provider_ref: Some(provider_ref.to_owned()),
            reason: None,
            invoice_id: Some(invoice_id.to_string()),
            at,
        }
    }

    pub(crate) fn declined(order_id: Uuid, reason: &str, at: NaiveDateTime) -> Self {
        Self {
            order_id: order_id.to_string(),
            status: PaymentStatus::Declined,
            provider_ref: None,
            reason: Some(reason.to_owned()),
            invoice_id: None,
            at,
        }
    }

    /// `pending` as this settlement leaves it.
    pub(crate) fn settled(&self, pending: StoredPayment) -> StoredPayment {
        StoredPayment {
            stage: Stage::Settled(self.status),
            provider_ref: self.provider_ref.clone(),
            invoice_id: self
                .invoice_id
                .as_deref()
                .and_then(|id| Uuid::parse_str(id).ok()),
            ..pending
        }
    }
}

impl DeferredUpdate for Settlement {
    fn update_all(
        conn: &mut DbConnection,
        settlements: &[Self],
        riders: &mut Riders<'_>,
    ) -> QueryResult<()> {
        let statements = settlements
            .iter()
            .map(|settlement| {
                update(
                    payments::table,
                    payments::order_id
                        .eq(&settlement.order_id)
                        .and(payments::status.eq(PENDING)),
                    (
                        payments::status.eq(settlement.status.as_str()),
                        payments::provider_ref.eq(&settlement.provider_ref),
                        payments::decline_reason.eq(&settlement.reason),
                        payments::attempt_started_at.eq(None::<NaiveDateTime>),
                        payments::invoice_id.eq(&settlement.invoice_id),
                        payments::updated_at.eq(settlement.at),
                    ),
                )
                .returning(payments::order_id)
            })
            .collect();
        let settled: Vec<String> = update_all(conn, statements, riders)?;
        all_changed(settled.len(), settlements.len())
    }
}

/// Marks a captured payment refunded in full (taking its row lock); answers whether it
/// was captured.
pub(crate) fn mark_refunded(
    conn: &mut DbConnection,
    order_id: Uuid,
    at: NaiveDateTime,
) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        update(
            payments::table,
            payments::order_id
                .eq(order_id.to_string())
                .and(payments::status.eq(PaymentStatus::Captured.as_str())),
            (
                payments::status.eq(PaymentStatus::Refunded.as_str()),
                payments::refunded_amount.eq(payments::amount),
                payments::updated_at.eq(at),
            ),
        )
        .execute(conn)
        .map(|rows| rows == 1)
    })
}

pub(crate) fn insert_refund(
    conn: &mut DbConnection,
    payment: &StoredPayment,
    provider_ref: &str,
    at: NaiveDateTime,
) -> QueryResult<()> {
    per_backend!(conn, |conn| {
        diesel::insert_into(refunds::table)
            .values((
                refunds::id.eq(Uuid::now_v7().to_string()),
                refunds::payment_id.eq(payment.id.to_string()),
                refunds::order_id.eq(payment.order_id.to_string()),
                refunds::amount.eq(payment.amount.amount),
                refunds::currency.eq(&payment.amount.currency),
                refunds::provider_ref.eq(provider_ref),
                refunds::created_at.eq(at),
            ))
            .execute(conn)
            .map(|_| ())
    })
}

/// Up to `limit` settled payments in id order (UUIDv7: creation order), after `after`,
/// of one order if `order_id` is given. Pending payments are never listed.
pub(crate) fn list_payments(
    conn: &mut DbConnection,
    order_id: Option<Uuid>,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<PaymentRow>> {
    per_backend!(conn, |conn| {
        let mut select = payments::table
            .select(PaymentRow::as_select())
            .filter(payments::status.ne(PENDING))
            .order(payments::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(order_id) = order_id {
            select = select.filter(payments::order_id.eq(order_id.to_string()));
        }
        if let Some(after) = after {
            select = select.filter(payments::id.gt(after.to_owned()));
        }
        select.load(conn)
    })
}

/// The invoice numbers a transaction has taken (`Events::transaction_memo`): after its
/// first capture of a year took a number from the counter, locking the counter's row until
/// the transaction ends, the transaction's next captures of that year number on from it
/// without a round trip each, and leave the counter's advance to the batch
/// ([`InvoiceCounterAdvance`]).
#[derive(Debug, Default)]
pub(crate) struct InvoiceNumbersTaken {
    last_by_year: Vec<(i32, i64)>,
}

impl InvoiceNumbersTaken {
    /// The number after the last one this transaction took in `year`, taken; `None` if it
    /// took none yet (the caller takes it from the counter: [`next_invoice_number`]).
    pub(crate) fn take_next(&mut self, year: i32) -> Option<i64> {
        let (_, last) = self
            .last_by_year
            .iter_mut()
            .find(|(taken_in, _)| *taken_in == year)?;
        *last += 1;
        Some(*last)
    }

    /// `number`, taken from the counter of `year` by this transaction.
    pub(crate) fn took(&mut self, year: i32, number: i64) {
        self.last_by_year.push((year, number));
    }
}

/// Numbers taken without the counter ([`InvoiceNumbersTaken`]), added to the counter of
/// `year` at the batch's end: one statement a year however many captures took them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InvoiceCounterAdvance {
    pub(crate) year: i32,
}

impl DeferredUpdate for InvoiceCounterAdvance {
    fn update_all(
        conn: &mut DbConnection,
        advances: &[Self],
        riders: &mut Riders<'_>,
    ) -> QueryResult<()> {
        let mut by_year: Vec<(i32, i64)> = Vec::new();
        for advance in advances {
            match by_year.iter_mut().find(|(year, _)| *year == advance.year) {
                Some((_, by)) => *by += 1,
                None => by_year.push((advance.year, 1)),
            }
        }
        let years = by_year.len();
        let statements = by_year
            .into_iter()
            .map(|(year, by)| {
                update(
                    invoice_counters::table,
                    invoice_counters::year.eq(year),
                    invoice_counters::last_number.eq(invoice_counters::last_number + by),
                )
                .returning(invoice_counters::year)
            })
            .collect();
        let advanced: Vec<i32> = update_all(conn, statements, riders)?;
        all_changed(advanced.len(), years)
    }
}

/// The next invoice number of `year`, gap-free: the counter's `UPDATE` takes its row lock
/// on PostgreSQL, so concurrent captures number one after the other, and a rolled-back
/// capture gives its number back. The year's first invoice inserts the counter; two
/// concurrent first invoices meet a unique violation, and the loser's caller retries.
pub(crate) fn next_invoice_number(conn: &mut DbConnection, year: i32) -> QueryResult<i64> {
    per_backend!(conn, |conn| {
        let taken = update(
            invoice_counters::table,
            invoice_counters::year.eq(year),
            invoice_counters::last_number.eq(invoice_counters::last_number + 1),
        )
        .returning(invoice_counters::last_number)
        .get_result(conn)
        .optional()?;
        match taken {
            Some(number) => Ok(number),
            None => diesel::insert_into(invoice_counters::table)
                .values((
                    invoice_counters::year.eq(year),
                    invoice_counters::last_number.eq(1_i64),
                ))
                .execute(conn)
                .map(|_| 1),
        }
    })
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = invoices)]
pub(crate) struct InvoiceRow {
    pub(crate) id: String,
    pub(crate) number: String,
    pub(crate) payment_id: String,
    pub(crate) order_id: String,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) issued_at: NaiveDateTime,
}

impl InvoiceRow {
    pub(crate) fn into_invoice(self) -> Invoice {
        Invoice {
            id: Uuid::parse_str(&self.id).unwrap_or_default(),
            number: self.number,
            order_id: Uuid::parse_str(&self.order_id).unwrap_or_default(),
            amount: Money::new(self.amount, self.currency),
            issued_at: self.issued_at.and_utc(),
        }
    }
}

chassis::deferred_row!(InvoiceRow => invoices {
    id, number, payment_id, order_id, amount, currency, issued_at
});

pub(crate) fn find_invoice(conn: &mut DbConnection, id: Uuid) -> QueryResult<Option<InvoiceRow>> {
    per_backend!(conn, |conn| {
        invoices::table
            .find(id.to_string())
            .select(InvoiceRow::as_select())
            .get_result(conn)
            .optional()
    })
}

pub(crate) fn find_invoice_of_order(
    conn: &mut DbConnection,
    order_id: Uuid,
) -> QueryResult<Option<InvoiceRow>> {
    per_backend!(conn, |conn| {
        invoices::table
            .filter(invoices::order_id.eq(order_id.to_string()))
            .select(InvoiceRow::as_select())
            .get_result(conn)
            .optional()
    })
}

/// Whether `order_id` was voided: refunded before any charge of it was seen.
pub(crate) fn is_voided(conn: &mut DbConnection, order_id: Uuid) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        diesel::select(diesel::dsl::exists(
            charge_decisions::table
                .find(order_id.to_string())
                .filter(charge_decisions::decision.eq(VOID)),
        ))
        .get_result(conn)
    })
}

/// Voids `order_id` unless a first charge of it (or a void) was recorded first; answers
/// whether it did. A first charge in flight elsewhere, its decision inserted, is waited
/// for.
pub(crate) fn insert_void(
    conn: &mut DbConnection,
    order_id: Uuid,
    at: NaiveDateTime,
) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        diesel::insert_into(charge_decisions::table)
            .values((
                charge_decisions::order_id.eq(order_id.to_string()),
                charge_decisions::decision.eq(VOID),
                charge_decisions::decided_at.eq(at),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .map(|inserted| inserted == 1)
    })
}
