//! Events a consumer could not handle after every retry, parked in the consumer's own
//! database for an operator to list and replay (`bazaar dead-letters`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::dead_letters;
use super::{DeadLetterStore, Envelope, EventHandler, HandlerError};
use crate::db::{Database, DbError, update, utc_now};

/// The dead letters of the consumers whose database this is.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    db: Database,
}

/// One parked event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: Uuid,
    pub consumer: String,
    pub event: Envelope,
    pub error: String,
    pub attempts: i64,
    pub failed_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub replayed: usize,
    pub failed_again: usize,
    /// Dead letters of consumers that have no handler in this process.
    pub skipped: usize,
}

#[derive(Queryable)]
struct Row {
    id: String,
    consumer: String,
    envelope: String,
    error: String,
    attempts: i64,
    failed_at: NaiveDateTime,
    replayed_at: Option<NaiveDateTime>,
}

impl DeadLetters {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Parked events, oldest first; replayed ones too when `include_replayed`.
    pub async fn list(&self, include_replayed: bool) -> Result<Vec<DeadLetter>, DbError> {
        self.db
            .read(move |conn| {
                let mut query = dead_letters::table
                    .select((
                        dead_letters::id,
                        dead_letters::consumer,
                        dead_letters::envelope,
                        dead_letters::error,
                        dead_letters::attempts,
                        dead_letters::failed_at,
                        dead_letters::replayed_at,
                    ))
                    .order((dead_letters::failed_at.asc(), dead_letters::id.asc()))
                    .into_boxed();
                if !include_replayed {
                    query = query.filter(dead_letters::replayed_at.is_null());
                }
                let rows: Vec<Row> = query.load(conn)?;
                rows.into_iter().map(DeadLetter::try_from).collect()
            })
            .await
    }

    /// Hands parked events again to their consumer's handler, once each: `only` one of
    /// them, or every one not replayed yet. A success marks the dead letter replayed; a
    /// failure (a panic too) records the new error.
    pub async fn replay(
        &self,
        handlers: &[(String, Arc<dyn EventHandler>)],
        only: Option<Uuid>,
    ) -> Result<ReplayReport, DbError> {
        let mut report = ReplayReport::default();
        for letter in self.list(false).await? {
            if only.is_some_and(|id| id != letter.id) {
                continue;
            }
            let Some((_, handler)) = handlers
                .iter()
                .find(|(consumer, _)| *consumer == letter.consumer)
            else {
                report.skipped += 1;
                continue;
            };
            let outcome = super::consumer::handle(handler.as_ref(), &letter.event).await;
            let id = letter.id.to_string();
            match outcome {
                Ok(()) => {
                    report.replayed += 1;
                    self.db
                        .write(move |conn| {
                            update(
                                dead_letters::table,
                                dead_letters::id.eq(&id),
                                dead_letters::replayed_at.eq(utc_now()),
                            )
                            .execute(conn)
                            .map_err(DbError::from)
                        })
                        .await?;
                }
                Err(error) => {
                    report.failed_again += 1;
                    self.db
                        .write(move |conn| {
                            update(
                                dead_letters::table,
                                dead_letters::id.eq(&id),
                                (
                                    dead_letters::error.eq(&error.0),
                                    dead_letters::attempts.eq(dead_letters::attempts + 1),
                                    dead_letters::failed_at.eq(utc_now()),
                                ),
                            )
                            .execute(conn)
                            .map_err(DbError::from)
                        })
                        .await?;
                }
            }
        }
        Ok(report)
    }
}

impl TryFrom<Row> for DeadLetter {
    type Error = DbError;

    fn try_from(row: Row) -> Result<Self, DbError> {
        Ok(DeadLetter {
            id: Uuid::parse_str(&row.id).map_err(|error| DbError::Encoding(error.to_string()))?,
            consumer: row.consumer,
            event: serde_json::from_str(&row.envelope)
                .map_err(|error| DbError::Encoding(error.to_string()))?,
            error: row.error,
            attempts: row.attempts,
            failed_at: row.failed_at.and_utc(),
            replayed_at: row.replayed_at.map(|at| at.and_utc()),
        })
    }
}

#[async_trait]
impl DeadLetterStore for DeadLetters {
    async fn park(
        &self,
        consumer: &str,
        event: &Envelope,
        error: &str,
        attempts: u32,
    ) -> Result<(), HandlerError> {
        let envelope = serde_json::to_string(event).map_err(HandlerError::new)?;
        let values = (
            dead_letters::id.eq(Uuid::now_v7().to_string()),
            dead_letters::consumer.eq(consumer.to_owned()),
            dead_letters::event_id.eq(event.id.to_string()),
            dead_letters::event_type.eq(event.event_type.clone()),
            dead_letters::event_key.eq(event.key.clone()),
            dead_letters::envelope.eq(envelope),
            dead_letters::error.eq(error.to_owned()),
            dead_letters::attempts.eq(i64::from(attempts)),
            dead_letters::failed_at.eq(utc_now()),
        );
        self.db
            .write(move |conn| {
                diesel::insert_into(dead_letters::table)
                    .values(values.clone())
                    .execute(conn)
                    .map_err(DbError::from)
            })
            .await
            .map(|_| ())
            .map_err(HandlerError::new)
    }
}
