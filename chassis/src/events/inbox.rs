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
    /// redelivered event has no second effect. Events the effect pushes go to the
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
    /// before (the effect did not run).
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
        let consumer = self.consumer.clone();
        let event_id = event.id.to_string();
        self.db
            .write_with_events(move |conn, events| {
                // Recorded first, in one statement: a row already there (an event handled
                // before, or being handled by a concurrent delivery, whose commit this
                // insert waits for) inserts nothing, and the effect does not run.
                let recorded = crate::per_backend!(conn, |conn| diesel::insert_into(inbox::table)
                    .values((
                        inbox::consumer.eq(&consumer),
                        inbox::event_id.eq(&event_id),
                        inbox::handled_at.eq(utc_now()),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn))?;
                if recorded == 0 {
                    return Ok(None);
                }
                let answer = effect(conn, events)?;
                Ok(Some(answer))
            })
            .await
    }
}
