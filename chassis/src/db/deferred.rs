//! Inserts a write leaves to its batch: rows of one kind, from every write of a batch,
//! inserted together just before the batch commits — on PostgreSQL in one multi-row
//! statement ([`Events::insert_at_commit`](crate::events::Events::insert_at_commit)) — in
//! every transaction the writer runs, a write's alone too.
//!
//! Why: on PostgreSQL each statement is a round trip, and most of what an order costs
//! there (BENCHMARKS.md, "Orders on PostgreSQL"). A row nothing in the batch reads — a new
//! order, a reservation, an invoice — can wait for the end of the batch and go with the
//! others of its kind, as the batch's events go to the outbox.
//!
//! What keeps it correct: the rows are inserted in the batch's own transaction, so they
//! commit with the writes that made them or not at all. A row that breaks a key at the
//! flush (a repeated call, or two concurrent ones, in one batch) fails the whole batch;
//! the writer then runs each of its writes again alone, and the key's error is the answer
//! of the write whose row broke it — what its own insert would have answered, so its
//! caller handles it as before (a repeated reserve looks, a repeated idempotency key
//! replays). Hence the rules for callers: a deferred row must not be read in its batch —
//! no write may decide anything on its presence or absence, other than through a key that
//! fails the flush — and a write cannot catch its deferred insert's error, only its caller
//! can. The rows go in last in every transaction, alone too, so the locks of their keys
//! are always taken after the rows the writes updated, in every instance alike.

use std::any::{Any, TypeId};

use super::{DbConnection, DbError};

/// Most rows one deferred `INSERT` carries: far below either backend's limit on a
/// statement's bound values at the widths of the rows deferred (≤ 30 columns).
const ROWS_PER_INSERT: usize = 100;

/// A row a write may leave to its batch (module docs): how to insert several at once.
/// Implemented by [`deferred_row!`](crate::deferred_row), one line per kind of row.
pub trait DeferredRow: Send + Sized + 'static {
    /// Inserts `rows` (at most a hundred).
    fn insert_all(conn: &mut DbConnection, rows: &[Self]) -> diesel::QueryResult<()>;
}

/// Makes a row type a [`DeferredRow`] of a table: `deferred_row!(OrderRow => orders::table)`.
///
/// On PostgreSQL the rows go in one multi-row `INSERT` — one round trip for the batch's
/// rows of the kind (diesel prepares a statement of a varying number of rows anew each
/// time; one round trip still). On SQLite, where there is no round trip to save, each row
/// goes in through the one-row `INSERT` the connection keeps prepared, cheaper there than
/// parsing a multi-row statement every batch. A single row is the prepared one-row
/// `INSERT` on both.
#[macro_export]
macro_rules! deferred_row {
    ($row:ty => $table:path) => {
        impl $crate::db::DeferredRow for $row {
            fn insert_all(
                conn: &mut $crate::db::DbConnection,
                rows: &[Self],
            ) -> ::diesel::QueryResult<()> {
                use ::diesel::RunQueryDsl as _;
                match (conn, rows) {
                    ($crate::db::DbConnection::Postgres(conn), [row]) => {
                        ::diesel::insert_into($table).values(row).execute(conn)?;
                    }
                    ($crate::db::DbConnection::Postgres(conn), rows) => {
                        ::diesel::insert_into($table).values(rows).execute(conn)?;
                    }
                    ($crate::db::DbConnection::Sqlite(conn), rows) => {
                        for row in rows {
                            ::diesel::insert_into($table).values(row).execute(conn)?;
                        }
                    }
                }
                Ok(())
            }
        }
    };
}

/// The rows deferred in one batch (or one run of a write), grouped by kind in the order
/// each kind was first deferred: a kind whose rows refer to another's (a foreign key) is
/// deferred after it, by the write that defers both.
#[derive(Default)]
pub(crate) struct DeferredInserts {
    groups: Vec<Box<dyn Group>>,
}

impl std::fmt::Debug for DeferredInserts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredInserts")
            .field("rows", &self.len())
            .finish()
    }
}

impl DeferredInserts {
    pub(crate) fn push<R: DeferredRow>(&mut self, row: R) {
        let mine = self
            .groups
            .iter_mut()
            .find_map(|group| group.as_any_mut().downcast_mut::<Rows<R>>());
        match mine {
            Some(rows) => rows.0.push(row),
            None => self.groups.push(Box::new(Rows(vec![row]))),
        }
    }

    /// Adds a write's rows to the batch's.
    pub(crate) fn extend(&mut self, other: Self) {
        for group in other.groups {
            match self
                .groups
                .iter_mut()
                .find(|mine| mine.kind() == group.kind())
            {
                Some(mine) => mine.absorb(group),
                None => self.groups.push(group),
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.groups.iter().map(|group| group.len()).sum()
    }

    /// Inserts every row, kind by kind.
    pub(crate) fn flush(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        for group in &self.groups {
            group.flush(conn)?;
        }
        Ok(())
    }
}

/// The rows of one kind, behind a type the batch can hold several kinds of.
trait Group: Send {
    fn kind(&self) -> TypeId;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Takes `other`'s rows, of the same kind, after its own.
    fn absorb(&mut self, other: Box<dyn Group>);
    fn len(&self) -> usize;
    fn flush(&self, conn: &mut DbConnection) -> Result<(), DbError>;
}

struct Rows<R>(Vec<R>);

impl<R: DeferredRow> Group for Rows<R> {
    fn kind(&self) -> TypeId {
        TypeId::of::<R>()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn absorb(&mut self, mut other: Box<dyn Group>) {
        if let Some(rows) = other.as_any_mut().downcast_mut::<Self>() {
            self.0.append(&mut rows.0);
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn flush(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        for chunk in self.0.chunks(ROWS_PER_INSERT) {
            R::insert_all(conn, chunk)?;
        }
        Ok(())
    }
}
