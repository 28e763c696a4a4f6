//! The orders module's queries, written once for both backends against `DbConnection`.

use chassis::db::{DbConnection, DeferredUpdate, Riders, all_changed, update, update_all, utc_now};
use chassis::per_backend;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use orders_contract::{Money, Order, OrderLine, OrderStatus, RejectionReason};
use uuid::Uuid;

use crate::domain::Step;
use crate::schema::{idempotency_keys, orders};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = orders)]
pub(crate) struct OrderRow {
    pub(crate) id: String,
    pub(crate) status: String,
    pub(crate) customer_email: String,
    pub(crate) total_amount: i64,
    pub(crate) currency: String,
    pub(crate) rejection_reason: Option<String>,
    pub(crate) payment_token: Option<String>,
    pub(crate) saga_step: Option<String>,
    pub(crate) saga_attempts: i64,
    pub(crate) saga_next_at: Option<NaiveDateTime>,
    pub(crate) saga_deadline: NaiveDateTime,
    pub(crate) saga_owner: Option<String>,
    pub(crate) saga_lease_until: Option<NaiveDateTime>,
    pub(crate) saga_error: Option<String>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
    /// The lines, encoded by [`encode_lines`].
    pub(crate) lines: String,
}

/// An order line as its order's row keeps it (one element of the `lines` JSON array, in
/// line order): prices snapshotted when the order was placed, never changed after.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct LineRow {
    pub(crate) product_id: String,
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) quantity: i64,
    pub(crate) unit_price: i64,
    pub(crate) line_total: i64,
}

/// The `lines` column of an order's row.
pub(crate) fn encode_lines(lines: &[LineRow]) -> String {
    // Strings and integers always encode.
    serde_json::to_string(lines).unwrap_or_else(|_| "[]".to_owned())
}

impl OrderRow {
    /// The lines stored with the order.
    pub(crate) fn lines(&self) -> QueryResult<Vec<LineRow>> {
        serde_json::from_str(&self.lines).map_err(|error| {
            diesel::result::Error::DeserializationError(
                format!("the lines of order {}: {error}", self.id).into(),
            )
        })
    }

    pub(crate) fn order_id(&self) -> Uuid {
        // Ids are written by this module only, always as UUIDs.
        Uuid::parse_str(&self.id).unwrap_or_default()
    }

    pub(crate) fn status(&self) -> OrderStatus {
        OrderStatus::parse(&self.status).unwrap_or(OrderStatus::Pending)
    }

    pub(crate) fn step(&self) -> Option<Step> {
        self.saga_step.as_deref().and_then(Step::parse)
    }

    pub(crate) fn total(&self) -> Money {
        Money::new(self.total_amount, self.currency.clone())
    }

    pub(crate) fn into_order(self, lines: Vec<LineRow>) -> Order {
        let currency = self.currency.clone();
        let status = self.status();
        Order {
            id: self.order_id(),
            status,
            lines: lines
                .into_iter()
                .map(|line| OrderLine {
                    product_id: Uuid::parse_str(&line.product_id).unwrap_or_default(),
                    sku: line.sku,
                    name: line.name,
                    quantity: u32::try_from(line.quantity).unwrap_or(u32::MAX),
                    unit_price: Money::new(line.unit_price, currency.clone()),
                    line_total: Money::new(line.line_total, currency.clone()),
                })
                .collect(),
            total: Money::new(self.total_amount, self.currency),
            customer_email: self.customer_email,
            // The reason is decided when compensation starts, but only told once rejected.
            rejection_reason: match status {
                OrderStatus::Rejected => self
                    .rejection_reason
                    .as_deref()
                    .and_then(RejectionReason::parse),
                _ => None,
            },
            created_at: self.created_at.and_utc(),
            updated_at: self.updated_at.and_utc(),
        }
    }
}

// A new order, its lines in its row (`order.lines`), is inserted at its batch's commit,
// with the batch's other new orders.
chassis::deferred_row!(OrderRow => orders {
    id, status, customer_email, total_amount, currency, rejection_reason, payment_token,
    saga_step, saga_attempts, saga_next_at, saga_deadline, saga_owner, saga_lease_until,
    saga_error, created_at, updated_at, lines
});

/// An idempotency key stored with its order (inserted after the batch's new orders, which
/// it refers to).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = idempotency_keys)]
pub(crate) struct IdempotencyKeyRow {
    idempotency_key: String,
    request_hash: String,
    order_id: String,
    created_at: NaiveDateTime,
}

impl IdempotencyKeyRow {
    pub(crate) fn new(key: &str, hash: &str, order_id: Uuid) -> Self {
        Self {
            idempotency_key: key.to_owned(),
            request_hash: hash.to_owned(),
            order_id: order_id.to_string(),
            created_at: utc_now(),
        }
    }
}

chassis::deferred_row!(IdempotencyKeyRow => idempotency_keys {
    idempotency_key, request_hash, order_id, created_at
});

/// The order and request fingerprint stored under an idempotency key.
pub(crate) fn find_idempotency_key(
    conn: &mut DbConnection,
    key: &str,
) -> QueryResult<Option<(Uuid, String)>> {
    per_backend!(conn, |conn| {
        let found: Option<(String, String)> = idempotency_keys::table
            .find(key)
            .select((idempotency_keys::order_id, idempotency_keys::request_hash))
            .get_result(conn)
            .optional()?;
        Ok(found.map(|(order_id, hash)| (Uuid::parse_str(&order_id).unwrap_or_default(), hash)))
    })
}

pub(crate) fn find_row(conn: &mut DbConnection, id: Uuid) -> QueryResult<Option<OrderRow>> {
    per_backend!(conn, |c| orders::table
        .find(id.to_string())
        .select(OrderRow::as_select())
        .get_result(c)
        .optional())
}

pub(crate) fn find_order(conn: &mut DbConnection, id: Uuid) -> QueryResult<Option<Order>> {
    let Some(row) = find_row(conn, id)? else {
        return Ok(None);
    };
    let lines = row.lines()?;
    Ok(Some(row.into_order(lines)))
}

/// A customer's orders, newest first (ids are UUIDv7), before `before` when given.
pub(crate) fn list_by_customer(
    conn: &mut DbConnection,
    customer_email: &str,
    before: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<Order>> {
    let rows: Vec<OrderRow> = per_backend!(conn, |conn| {
        let mut query = orders::table
            .filter(orders::customer_email.eq(customer_email))
            .order(orders::id.desc())
            .limit(limit)
            .select(OrderRow::as_select())
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(orders::id.lt(before.to_owned()));
        }
        query.load(conn)
    })?;
    rows.into_iter()
        .map(|row| {
            let lines = row.lines()?;
            Ok(row.into_order(lines))
        })
        .collect()
}

/// Takes the saga of `id` for the run `owner` until `lease_until`, unless a lease still
/// runs (whoever holds it: a run never shares a saga) or no saga work remains; answers
/// whether it did.
pub(crate) fn claim_saga(
    conn: &mut DbConnection,
    id: Uuid,
    owner: &str,
    lease_until: NaiveDateTime,
) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        let now = utc_now();
        update(
            orders::table,
            orders::id
                .eq(id.to_string())
                .and(orders::saga_step.is_not_null())
                .and(
                    orders::saga_lease_until
                        .is_null()
                        .or(orders::saga_lease_until.lt(now)),
                ),
            (
                orders::saga_owner.eq(owner),
                orders::saga_lease_until.eq(lease_until),
            ),
        )
        .execute(conn)
        .map(|rows| rows == 1)
    })
}

/// Records the next step (and the rejection reason compensation will end with), renewing
/// the lease; answers false if `owner` no longer holds the saga.
pub(crate) fn set_step(
    conn: &mut DbConnection,
    id: Uuid,
    owner: &str,
    step: Step,
    reason: Option<RejectionReason>,
    lease_until: NaiveDateTime,
) -> QueryResult<bool> {
    per_backend!(conn, |c| update(
        orders::table,
        orders::id
            .eq(id.to_string())
            .and(orders::saga_owner.eq(owner)),
        (
            orders::saga_step.eq(step.as_str()),
            orders::saga_attempts.eq(0_i64),
            orders::saga_next_at.eq(None::<NaiveDateTime>),
            orders::saga_error.eq(None::<String>),
            orders::saga_lease_until.eq(lease_until),
            orders::updated_at.eq(utc_now()),
            // Left out of the statement when `None`: an earlier reason stands.
            reason.map(|reason| orders::rejection_reason.eq(reason.as_str())),
        ),
    )
    .execute(c))
    .map(|rows| rows == 1)
}

/// Records a failed attempt of `step` (the `attempts`th): the step to resume at, when to
/// try again, and why; gives the lease up.
pub(crate) fn postpone(
    conn: &mut DbConnection,
    id: Uuid,
    owner: &str,
    step: Step,
    attempts: i64,
    next_at: NaiveDateTime,
    error: &str,
) -> QueryResult<()> {
    per_backend!(conn, |conn| {
        update(
            orders::table,
            orders::id
                .eq(id.to_string())
                .and(orders::saga_owner.eq(owner)),
            (
                orders::saga_step.eq(step.as_str()),
                orders::saga_attempts.eq(attempts),
                orders::saga_next_at.eq(next_at),
                orders::saga_error.eq(error),
                orders::saga_owner.eq(None::<String>),
                orders::saga_lease_until.eq(None::<NaiveDateTime>),
            ),
        )
        .execute(conn)
        .map(|_| ())
    })
}

/// A saga's end, left to the batch (`Events::update_at_commit`): the order's new status
/// and, when it is decided here, the rejection reason, written only while `owner` still
/// holds the saga. The run that holds it knows the row (nobody else writes it meanwhile),
/// so it builds the order's event from what it holds, and the end needs no answer; should
/// another run have taken the saga over, the end finds no row to change, and the write
/// that left it is answered [`DbError::NotApplied`](chassis::db::DbError::NotApplied). On PostgreSQL a batch's
/// ends are one statement.
#[derive(Debug, Clone)]
pub(crate) struct SagaEnd {
    id: String,
    owner: String,
    status: &'static str,
    reason: Option<&'static str>,
    at: NaiveDateTime,
}

impl SagaEnd {
    pub(crate) fn new(
        id: Uuid,
        owner: &str,
        status: OrderStatus,
        reason: Option<RejectionReason>,
        at: NaiveDateTime,
    ) -> Self {
        Self {
            id: id.to_string(),
            owner: owner.to_owned(),
            status: status.as_str(),
            reason: reason.map(RejectionReason::as_str),
            at,
        }
    }

    /// The order's row as this end leaves it, from the row as its saga's run holds it.
    pub(crate) fn ended(&self, mut row: OrderRow) -> OrderRow {
        row.status = self.status.to_owned();
        row.saga_step = None;
        row.saga_next_at = None;
        row.saga_owner = None;
        row.saga_lease_until = None;
        row.saga_error = None;
        row.payment_token = None;
        row.updated_at = self.at;
        if let Some(reason) = self.reason {
            row.rejection_reason = Some(reason.to_owned());
        }
        row
    }
}

impl DeferredUpdate for SagaEnd {
    fn update_all(
        conn: &mut DbConnection,
        ends: &[Self],
        riders: &mut Riders<'_>,
    ) -> QueryResult<()> {
        let statements = ends
            .iter()
            .map(|end| {
                update(
                    orders::table,
                    orders::id
                        .eq(&end.id)
                        .and(orders::saga_owner.eq(&end.owner)),
                    (
                        orders::status.eq(end.status),
                        orders::saga_step.eq(None::<String>),
                        orders::saga_next_at.eq(None::<NaiveDateTime>),
                        orders::saga_owner.eq(None::<String>),
                        orders::saga_lease_until.eq(None::<NaiveDateTime>),
                        orders::saga_error.eq(None::<String>),
                        orders::payment_token.eq(None::<String>),
                        orders::updated_at.eq(end.at),
                        // Left out of the statement when `None`: an earlier reason stands.
                        end.reason.map(|reason| orders::rejection_reason.eq(reason)),
                    ),
                )
                .returning(orders::id)
            })
            .collect();
        let ended: Vec<String> = update_all(conn, statements, riders)?;
        all_changed(ended.len(), ends.len())
    }
}

/// Starts the cancellation of a confirmed order that has no saga work left.
pub(crate) fn start_cancellation(
    conn: &mut DbConnection,
    id: Uuid,
    owner: &str,
    lease_until: NaiveDateTime,
) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        update(
            orders::table,
            orders::id
                .eq(id.to_string())
                .and(orders::status.eq(OrderStatus::Confirmed.as_str()))
                .and(orders::saga_step.is_null()),
            (
                orders::saga_step.eq(Step::CancelRefund.as_str()),
                orders::saga_attempts.eq(0_i64),
                orders::saga_owner.eq(owner),
                orders::saga_lease_until.eq(lease_until),
                orders::updated_at.eq(utc_now()),
            ),
        )
        .execute(conn)
        .map(|rows| rows == 1)
    })
}

/// Sagas the recovery worker may resume now: due, and not held by a live lease.
pub(crate) fn due_sagas(conn: &mut DbConnection, limit: i64) -> QueryResult<Vec<Uuid>> {
    per_backend!(conn, |conn| {
        let now = utc_now();
        let ids: Vec<String> = orders::table
            .filter(orders::saga_step.is_not_null())
            .filter(
                orders::saga_next_at
                    .is_null()
                    .or(orders::saga_next_at.le(now)),
            )
            .filter(
                orders::saga_lease_until
                    .is_null()
                    .or(orders::saga_lease_until.lt(now)),
            )
            .order(orders::saga_next_at.asc())
            .limit(limit)
            .select(orders::id)
            .load(conn)?;
        Ok(ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect())
    })
}

/// Gives up every saga lease: for a SQLite database, which only this process writes.
pub(crate) fn release_all_leases(conn: &mut DbConnection) -> QueryResult<usize> {
    per_backend!(conn, |conn| {
        update(
            orders::table,
            orders::saga_owner.is_not_null(),
            (
                orders::saga_owner.eq(None::<String>),
                orders::saga_lease_until.eq(None::<NaiveDateTime>),
            ),
        )
        .execute(conn)
    })
}
