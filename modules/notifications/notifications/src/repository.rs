//! Notifications' queries, written once for both backends against `DbConnection`.
//!
//! A delivery is claimed by the worker with one conditional `UPDATE … WHERE claimed_until
//! IS NULL OR claimed_until < now`, so that of two workers (two processes on one
//! PostgreSQL database) exactly one sends it. An attempt records its outcome only while the
//! delivery still holds its own claim (`AttemptOutcome`), so an attempt that outlived its
//! lease, and whose delivery another attempt claimed since, changes nothing.

use chassis::db::{DbConnection, DeferredUpdate, Riders, all_changed, update, update_all};
use chassis::per_backend;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use notifications_contract::{Channel, Delivery, DeliveryStatus, Webhook};
use uuid::Uuid;

use crate::schema::{deliveries, webhooks};

pub(crate) use chassis::db::utc_now as now;

fn decoding(what: &str, value: &str) -> diesel::result::Error {
    diesel::result::Error::DeserializationError(format!("unknown {what} {value:?}").into())
}

fn uuid(text: &str) -> QueryResult<Uuid> {
    Uuid::parse_str(text).map_err(|error| diesel::result::Error::DeserializationError(error.into()))
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhooks)]
pub(crate) struct WebhookRow {
    pub(crate) id: String,
    pub(crate) url: String,
    pub(crate) events: String,
    pub(crate) secret: String,
    pub(crate) created_at: NaiveDateTime,
}

impl WebhookRow {
    pub(crate) fn event_types(&self) -> Vec<String> {
        serde_json::from_str(&self.events).unwrap_or_default()
    }

    pub(crate) fn into_webhook(self) -> QueryResult<Webhook> {
        Ok(Webhook {
            id: uuid(&self.id)?,
            events: self.event_types(),
            url: self.url,
            created_at: self.created_at.and_utc(),
        })
    }
}

pub(crate) fn insert_webhook(conn: &mut DbConnection, row: &WebhookRow) -> QueryResult<()> {
    per_backend!(conn, |conn| {
        diesel::insert_into(webhooks::table)
            .values((
                webhooks::id.eq(&row.id),
                webhooks::url.eq(&row.url),
                webhooks::events.eq(&row.events),
                webhooks::secret.eq(&row.secret),
                webhooks::created_at.eq(row.created_at),
            ))
            .execute(conn)
            .map(|_| ())
    })
}

/// Webhooks in creation order (ids are UUIDv7), after the key `after`.
pub(crate) fn list_webhooks(
    conn: &mut DbConnection,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<WebhookRow>> {
    per_backend!(conn, |conn| {
        let mut query = webhooks::table
            .select(WebhookRow::as_select())
            .order(webhooks::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(webhooks::id.gt(after.to_owned()));
        }
        query.load(conn)
    })
}

/// The webhook subscriptions as a transaction read them (`Events::transaction_memo`):
/// the events a batch records read them once, not once each. Every write of a batch was
/// waiting before the batch began, so a subscription another process adds meanwhile came
/// after all of them; one this process adds or deletes in the batch resets the memo
/// ([`WebhooksRead::forget`]), and the writes after it read again.
#[derive(Debug, Default)]
pub(crate) struct WebhooksRead(Option<Vec<WebhookRow>>);

impl WebhooksRead {
    /// Every subscription, read once a transaction.
    pub(crate) fn all(&mut self, conn: &mut DbConnection) -> QueryResult<&[WebhookRow]> {
        match &mut self.0 {
            Some(read) => Ok(read),
            unread => Ok(unread.insert(all_webhooks(conn)?)),
        }
    }

    pub(crate) fn forget(&mut self) {
        self.0 = None;
    }
}

fn all_webhooks(conn: &mut DbConnection) -> QueryResult<Vec<WebhookRow>> {
    per_backend!(conn, |conn| {
        webhooks::table
            .select(WebhookRow::as_select())
            .order(webhooks::id.asc())
            .load(conn)
    })
}

pub(crate) fn find_webhook(conn: &mut DbConnection, id: &str) -> QueryResult<Option<WebhookRow>> {
    per_backend!(conn, |conn| {
        webhooks::table
            .find(id.to_owned())
            .select(WebhookRow::as_select())
            .get_result(conn)
            .optional()
    })
}

/// Answers whether the webhook existed.
pub(crate) fn delete_webhook(conn: &mut DbConnection, id: Uuid) -> QueryResult<bool> {
    per_backend!(conn, |conn| {
        diesel::delete(webhooks::table.find(id.to_string()))
            .execute(conn)
            .map(|deleted| deleted > 0)
    })
}

/// A delivery about to be recorded.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = deliveries)]
pub(crate) struct NewDelivery {
    pub(crate) id: String,
    pub(crate) dedup_key: String,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) order_id: Option<String>,
    pub(crate) channel: String,
    pub(crate) recipient: String,
    pub(crate) template: String,
    pub(crate) webhook_id: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) text_body: Option<String>,
    pub(crate) html_body: Option<String>,
    pub(crate) payload: Option<String>,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) next_attempt_at: NaiveDateTime,
    /// Set when the recording handler attempts the delivery itself right after commit.
    pub(crate) claimed_until: Option<NaiveDateTime>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
}

impl NewDelivery {
    /// The row as the database now holds it.
    pub(crate) fn into_row(self) -> DeliveryRow {
        DeliveryRow {
            id: self.id,
            event_id: self.event_id,
            channel: self.channel,
            recipient: self.recipient,
            template: self.template,
            webhook_id: self.webhook_id,
            subject: self.subject,
            text_body: self.text_body,
            html_body: self.html_body,
            payload: self.payload,
            status: self.status,
            attempts: self.attempts,
            last_error: None,
            claimed_until: self.claimed_until,
            created_at: self.created_at,
        }
    }
}

// A delivery may be left to its batch: one already there with its `dedup_key` then breaks
// the key at the batch's end, and its event is recorded again with `insert_delivery`.
chassis::deferred_row!(NewDelivery => deliveries {
    id, dedup_key, event_id, event_type, order_id, channel, recipient, template, webhook_id,
    subject, text_body, html_body, payload, status, attempts, next_attempt_at, claimed_until,
    created_at, updated_at
});

/// Records a delivery unless one with its `dedup_key` exists; answers whether it did.
pub(crate) fn insert_delivery(conn: &mut DbConnection, new: &NewDelivery) -> QueryResult<bool> {
    // One statement, not a look and an insert: a row with the same key makes the insert
    // do nothing (and waits for a concurrent one to commit first).
    per_backend!(conn, |conn| {
        diesel::insert_into(deliveries::table)
            .values(new)
            .on_conflict(deliveries::dedup_key)
            .do_nothing()
            .execute(conn)
            .map(|inserted| inserted == 1)
    })
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = deliveries)]
pub(crate) struct DeliveryRow {
    pub(crate) id: String,
    pub(crate) event_id: String,
    pub(crate) channel: String,
    pub(crate) recipient: String,
    pub(crate) template: String,
    pub(crate) webhook_id: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) text_body: Option<String>,
    pub(crate) html_body: Option<String>,
    pub(crate) payload: Option<String>,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) last_error: Option<String>,
    /// The claim an attempt holds the delivery under; it records its outcome only while
    /// the delivery still carries it.
    pub(crate) claimed_until: Option<NaiveDateTime>,
    pub(crate) created_at: NaiveDateTime,
}

impl DeliveryRow {
    pub(crate) fn channel(&self) -> QueryResult<Channel> {
        Channel::parse(&self.channel).ok_or_else(|| decoding("channel", &self.channel))
    }

    pub(crate) fn into_delivery(self) -> QueryResult<Delivery> {
        Ok(Delivery {
            id: uuid(&self.id)?,
            event_id: uuid(&self.event_id)?,
            channel: self.channel()?,
            status: DeliveryStatus::parse(&self.status)
                .ok_or_else(|| decoding("status", &self.status))?,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            recipient: self.recipient,
            template: self.template,
            last_error: self.last_error,
            created_at: self.created_at.and_utc(),
        })
    }
}

/// Deliveries in creation order (ids are UUIDv7), of one order if given, after `after`.
pub(crate) fn list_deliveries(
    conn: &mut DbConnection,
    order_id: Option<Uuid>,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<DeliveryRow>> {
    per_backend!(conn, |conn| {
        let mut query = deliveries::table
            .select(DeliveryRow::as_select())
            .order(deliveries::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(order_id) = order_id {
            query = query.filter(deliveries::order_id.eq(order_id.to_string()));
        }
        if let Some(after) = after {
            query = query.filter(deliveries::id.gt(after.to_owned()));
        }
        query.load(conn)
    })
}

/// The status of a delivery still to be attempted. (Compared with `=`, not `IN`: diesel
/// never keeps an `IN` list's statement prepared.)
const OPEN: &str = "retrying";

/// The two kinds of delivery, which are sent from slots of their own and claimed apart, so
/// that webhooks never wait for e-mails, nor e-mails for webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `email` or `file`.
    Mail,
    Webhook,
}

impl Kind {
    pub(crate) fn of(row: &DeliveryRow) -> Self {
        if row.channel == Channel::Webhook.as_str() {
            Kind::Webhook
        } else {
            Kind::Mail
        }
    }
}

/// Up to `limit` deliveries of `kind` whose next attempt is due at `at` and that no live
/// worker holds, oldest first. A read: most wake-ups of the worker find nothing.
pub(crate) fn due(
    conn: &mut DbConnection,
    at: NaiveDateTime,
    kind: Kind,
    limit: i64,
) -> QueryResult<Vec<String>> {
    let webhook = Channel::Webhook.as_str();
    // Two statements rather than one boxed query, so that both stay prepared.
    per_backend!(conn, |conn| {
        let due = deliveries::table
            .filter(deliveries::status.eq(OPEN))
            .filter(deliveries::next_attempt_at.le(at))
            .filter(
                deliveries::claimed_until
                    .is_null()
                    .or(deliveries::claimed_until.lt(at)),
            )
            .order((deliveries::next_attempt_at.asc(), deliveries::id.asc()))
            .select(deliveries::id)
            .limit(limit);
        match kind {
            Kind::Mail => due.filter(deliveries::channel.ne(webhook)).load(conn),
            Kind::Webhook => due.filter(deliveries::channel.eq(webhook)).load(conn),
        }
    })
}

/// Claims those of `ids` still open and unheld at `at`, until `until`; answers them. One
/// statement for them all (a round trip on PostgreSQL), each row claimed only if it still
/// matches, as a statement a row would claim it.
pub(crate) fn claim(
    conn: &mut DbConnection,
    ids: &[String],
    at: NaiveDateTime,
    until: NaiveDateTime,
) -> QueryResult<Vec<DeliveryRow>> {
    per_backend!(conn, |conn| {
        // `diesel::update`, not the chassis' kept one: an `IN` list is a text of its own
        // for every number of ids on SQLite.
        diesel::update(
            deliveries::table.filter(
                deliveries::id
                    .eq_any(ids)
                    .and(deliveries::status.eq(OPEN))
                    .and(
                        deliveries::claimed_until
                            .is_null()
                            .or(deliveries::claimed_until.lt(at)),
                    ),
            ),
        )
        .set(deliveries::claimed_until.eq(Some(until)))
        .returning(DeliveryRow::as_returning())
        .get_results(conn)
    })
    .map(|mut claimed: Vec<DeliveryRow>| {
        // In the order asked for (oldest due first): `RETURNING` promises none.
        claimed.sort_by_key(|row| ids.iter().position(|id| *id == row.id));
        claimed
    })
}

/// The outcome of the attempt that claimed a delivery until `claimed_until`, recorded
/// and its claim released only while the attempt still holds it; left to the batch
/// (`Events::update_at_commit`), so that the outcomes of the attempts settled together
/// are one statement on PostgreSQL. An attempt that no longer holds its delivery's claim
/// gets [`DbError::NotApplied`](chassis::db::DbError::NotApplied) (`chassis::db::deferred`).
///
/// A claim's `claimed_until` is the claim's own: a new claim is taken only once the old one
/// has run out (`claimed_until < at`), and is `at` plus a lease, so each claim of a delivery
/// ends later than every earlier one. An attempt whose lease lapsed and whose delivery was
/// claimed again no longer matches, and its outcome — possibly a failure after the newer
/// attempt succeeded — is not recorded over the newer attempt's.
#[derive(Debug, Clone)]
pub(crate) struct AttemptOutcome {
    pub(crate) id: String,
    pub(crate) claimed_until: NaiveDateTime,
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: i64,
    pub(crate) last_error: Option<String>,
    pub(crate) next_attempt_at: NaiveDateTime,
}

impl DeferredUpdate for AttemptOutcome {
    fn update_all(
        conn: &mut DbConnection,
        outcomes: &[Self],
        riders: &mut Riders<'_>,
    ) -> QueryResult<()> {
        let at = now();
        let statements = outcomes
            .iter()
            .map(|outcome| {
                update(
                    deliveries::table,
                    deliveries::id
                        .eq(&outcome.id)
                        .and(deliveries::status.eq(OPEN))
                        .and(deliveries::claimed_until.eq(outcome.claimed_until)),
                    (
                        deliveries::status.eq(outcome.status.as_str()),
                        deliveries::attempts.eq(outcome.attempts),
                        deliveries::last_error.eq(&outcome.last_error),
                        deliveries::next_attempt_at.eq(outcome.next_attempt_at),
                        deliveries::claimed_until.eq(None::<NaiveDateTime>),
                        deliveries::updated_at.eq(at),
                    ),
                )
                .returning(deliveries::id)
            })
            .collect();
        let settled: Vec<String> = update_all(conn, statements, riders)?;
        all_changed(settled.len(), outcomes.len())
    }
}

#[cfg(test)]
mod tests {
    use chassis::db::{Backend, DbError};
    use chassis::testing::TestDatabase;
    use chrono::TimeDelta;

    use super::*;

    fn delivery(n: usize, at: NaiveDateTime) -> NewDelivery {
        NewDelivery {
            id: format!("delivery-{n}"),
            dedup_key: format!("key-{n}"),
            event_id: format!("event-{n}"),
            event_type: "order.confirmed".into(),
            order_id: None,
            channel: Channel::File.as_str().into(),
            recipient: "ada@example.com".into(),
            template: "order_confirmed".into(),
            webhook_id: None,
            subject: None,
            text_body: None,
            html_body: None,
            payload: None,
            status: OPEN.into(),
            attempts: 0,
            next_attempt_at: at,
            claimed_until: None,
            created_at: at,
            updated_at: at,
        }
    }

    /// The worker claims what is due in one statement, whatever its number, and only the
    /// rows still open and unheld: not one another attempt holds, nor one already sent.
    async fn a_claim_is_one_statement_and_takes_only_open_unheld_rows(backend: Backend) {
        let Some(test_db) = TestDatabase::new(backend) else {
            return;
        };
        let db = test_db.open(crate::MIGRATIONS).await;
        let at = now();
        let (held_until, until) = (at + TimeDelta::minutes(5), at + TimeDelta::minutes(1));
        db.write(move |conn| {
            for n in 0..6 {
                let mut new = delivery(n, at);
                match n {
                    4 => new.claimed_until = Some(held_until),
                    5 => new.status = DeliveryStatus::Sent.as_str().into(),
                    _ => {}
                }
                insert_delivery(conn, &new)?;
            }
            Ok::<_, DbError>(())
        })
        .await
        .expect("recorded");
        let claim_of = |ids: Vec<String>| {
            let db = db.clone();
            async move {
                let before = db.work_counts().statements;
                let claimed = db
                    .write(move |conn| claim(conn, &ids, at, until).map_err(DbError::from))
                    .await
                    .expect("claims");
                (claimed, db.work_counts().statements - before)
            }
        };
        let ids = |ns: &[usize]| ns.iter().map(|n| format!("delivery-{n}")).collect();
        let (one, alone) = claim_of(ids(&[0])).await;
        let (several, together) = claim_of(ids(&[3, 1, 2, 4, 5, 0])).await;
        assert_eq!(
            one.iter().map(|row| row.id.as_str()).collect::<Vec<_>>(),
            ["delivery-0"]
        );
        assert_eq!(
            several
                .iter()
                .map(|row| (row.id.as_str(), row.claimed_until))
                .collect::<Vec<_>>(),
            [
                ("delivery-3", Some(until)),
                ("delivery-1", Some(until)),
                ("delivery-2", Some(until)),
            ],
            "the open, unheld rows (0 is held by the first claim now), in the order asked"
        );
        assert_eq!(together, alone, "six ids cost what one did");
    }

    /// Workers of several instances claiming the same deliveries at once (each instance's
    /// claim one statement for all of them): every delivery is claimed by exactly one.
    async fn racing_claims_take_each_delivery_once(backend: Backend) {
        let Some(test_db) = TestDatabase::new(backend) else {
            return;
        };
        let mut instances = Vec::new();
        for _ in 0..chassis::testing::racing_instances(backend) {
            instances.push(test_db.open(crate::MIGRATIONS).await);
        }
        let at = now();
        let until = at + TimeDelta::minutes(1);
        instances[0]
            .write(move |conn| {
                for n in 0..40 {
                    insert_delivery(conn, &delivery(n, at))?;
                }
                Ok::<_, DbError>(())
            })
            .await
            .expect("recorded");
        let ids: Vec<String> = (0..40).map(|n| format!("delivery-{n}")).collect();
        // Each instance claims every delivery, twice over, all at once.
        let claims = futures::future::join_all(instances.iter().cycle().take(8).map(|db| {
            let ids = ids.clone();
            async move {
                db.write(move |conn| claim(conn, &ids, at, until).map_err(DbError::from))
                    .await
                    .expect("claims")
            }
        }))
        .await;
        let mut claimed: Vec<String> = claims.into_iter().flatten().map(|row| row.id).collect();
        claimed.sort_unstable();
        let mut expected = ids;
        expected.sort_unstable();
        assert_eq!(claimed, expected, "every delivery claimed once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_claims_take_each_delivery_once_sqlite() {
        racing_claims_take_each_delivery_once(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_claims_take_each_delivery_once_postgres() {
        racing_claims_take_each_delivery_once(Backend::Postgres).await;
    }

    #[tokio::test]
    async fn a_claim_is_one_statement_and_takes_only_open_unheld_rows_sqlite() {
        a_claim_is_one_statement_and_takes_only_open_unheld_rows(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn a_claim_is_one_statement_and_takes_only_open_unheld_rows_postgres() {
        a_claim_is_one_statement_and_takes_only_open_unheld_rows(Backend::Postgres).await;
    }
}
