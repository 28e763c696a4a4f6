use diesel::prelude::*;

use super::schema::inbox;
use super::{Envelope, Events};
use crate::db::{Database, DbConnection, DbError, utc_now};

/// What became of an event given to [`Inbox::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The effect was applied and the event recorded as handled.
    Handled,
    /// The event had been handled before: nothing was done.
    Duplicate,
}

/// A consumer's record of the events it has handled, in its own database.
#[derive(Debug, Clone)]
pub struct Inbox {
    db: Database,
    consumer: String,
}

impl Inbox {
    /// `consumer` is the subscription's consumer name.
    pub fn new(db: Database, consumer: impl Into<String>) -> Self {
        Self {
            db,
            consumer: consumer.into(),
        }
    }

    /// Applies `effect` and records the event as handled in one transaction, so that a
    /// redelivered event has no second effect (none that is kept: see
    /// [`Inbox::apply_returning`]). Events the effect pushes go to the
    /// consumer's own outbox in that same transaction.
    pub async fn apply<E, F>(&self, event: &Envelope, effect: F) -> Result<Applied, E>
    where
        F: FnMut(&mut DbConnection, &mut Events) -> Result<(), E> + Send + 'static,
        E: From<DbError> + From<diesel::result::Error> + Send + 'static,
    {
        Ok(match self.apply_returning(event, effect).await? {
            Some(()) => Applied::Handled,
            None => Applied::Duplicate,
        })
    }

    /// [`Inbox::apply`], answering what the effect answered, or `None` for an event handled
    /// before (whatever the effect did is rolled back).
    ///
    /// The record is left to the batch (`Events::insert_at_commit`): the writes of one
    /// batch record their events in one statement on PostgreSQL, not one each. So the
    /// effect runs before the record is known to be new; an event handled before breaks
    /// the inbox's key when the batch inserts its record, which rolls the effect back and
    /// fails the write (a delivery racing another waits for that one's commit first). A
    /// failed write whose event is found recorded is therefore answered `None`: the effect
    /// had been applied once, by the delivery that recorded it.
    pub async fn apply_returning<T, E, F>(
        &self,
        event: &Envelope,
        mut effect: F,
    ) -> Result<Option<T>, E>
    where
        F: FnMut(&mut DbConnection, &mut Events) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<diesel::result::Error> + Send + 'static,
    {
        let record = InboxRecord {
            consumer: self.consumer.clone(),
            event_id: event.id.to_string(),
            handled_at: utc_now(),
        };
        let lookup = (record.consumer.clone(), record.event_id.clone());
        let applied = self
            .db
            .write_with_events(move |conn, events| {
                let answer = effect(conn, events)?;
                events.insert_at_commit(record.clone());
                Ok(answer)
            })
            .await;
        match applied {
            Ok(answer) => Ok(Some(answer)),
            Err(error) => match self.recorded(lookup).await {
                Ok(true) => Ok(None),
                // Not handled before (or not known): the effect's own failure.
                Ok(false) | Err(_) => Err(error),
            },
        }
    }

    /// Whether the event `(consumer, event_id)` is recorded as handled.
    async fn recorded(&self, (consumer, event_id): (String, String)) -> Result<bool, DbError> {
        self.db
            .read(move |conn| {
                crate::per_backend!(conn, |conn| diesel::select(diesel::dsl::exists(
                    inbox::table.find((&consumer, &event_id))
                ))
                .get_result(conn))
                .map_err(DbError::from)
            })
            .await
    }
}

/// An event's record in a consumer's inbox.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = inbox)]
struct InboxRecord {
    consumer: String,
    event_id: String,
    handled_at: chrono::NaiveDateTime,
}

crate::deferred_row!(InboxRecord => inbox { consumer, event_id, handled_at });
