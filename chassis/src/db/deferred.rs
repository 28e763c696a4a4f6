//! Writes a write leaves to its batch: rows of one kind inserted, or rows of one kind
//! updated, from every write of a batch, together just before the batch commits — on
//! PostgreSQL the updates in one statement a kind, the new rows of every kind and the
//! outbox's in one ([`Events::insert_at_commit`](crate::events::Events::insert_at_commit),
//! [`Events::update_at_commit`](crate::events::Events::update_at_commit)) — in every
//! transaction the writer runs, a write's alone too.
//!
//! Why: on PostgreSQL each statement is a round trip, and most of what an order costs
//! there (BENCHMARKS.md, "Orders on PostgreSQL"). A row nothing in the batch reads — a new
//! order, a reservation, an invoice — can wait for the end of the batch and go with the
//! others of its kind, as the batch's events go to the outbox; so can a change whose
//! outcome the write needs not see — stock sold, a saga ended by its holder.
//!
//! What keeps it correct: the rows are written in the batch's own transaction, so they
//! commit with the writes that made them or not at all. A row that breaks a key at the
//! flush (a repeated call, or two concurrent ones, in one batch), or an update whose row
//! is not there or no longer matches its condition, fails the whole batch; the writer
//! then runs each of its writes again alone, and the error is the answer of the write that
//! left the row — what its own statement would have answered (a key's violation; for an
//! update, [`DbError::NotApplied`]), so its caller handles it as before (a
//! repeated reserve looks, a repeated idempotency key replays, a saga taken over stops).
//! Hence the rules for callers: a deferred row must not be read in its batch — no write
//! may decide anything on its presence or absence, nor on what a deferred update changes,
//! unless the decision holds with the update serialised after it (stock sold leaves what
//! is available as it was) — and a write cannot catch its deferred statement's error, only
//! its caller can. The updates go in first and the new rows last, in every transaction,
//! alone too, so that in every instance the locks come in the same order of kinds: the
//! rows the writes updated themselves, then the deferred updates' rows, then the new
//! rows' keys.

use std::any::{Any, TypeId};

use super::{DbConnection, DbError};

/// Most rows one deferred statement carries: far below either backend's limit on a
/// statement's bound values at the widths of the rows deferred (≤ 30 columns).
const ROWS_PER_STATEMENT: usize = 100;

/// Most parts one [`NewRows`] statement carries: each binds at most 5,000 values (a
/// hundred rows of ≤ 30 columns, or a thousand outbox rows of 5), and PostgreSQL takes at
/// most 65,535 in a statement.
const PARTS_PER_STATEMENT: usize = 12;

/// A row a write may leave to its batch (module docs): how to insert several at once.
/// Implemented by [`deferred_row!`](crate::deferred_row), one line per kind of row.
pub trait DeferredRow: Send + Sized + 'static {
    /// Inserts `rows` (at most a hundred): on SQLite, each through the one-row `INSERT`
    /// the connection keeps prepared.
    fn insert_all(conn: &mut DbConnection, rows: &[Self]) -> diesel::QueryResult<()>;

    /// The PostgreSQL `INSERT` of `rows` (at most a hundred), one part of the statement
    /// that inserts the batch's new rows of every kind ([`NewRows`]).
    fn insert_statement(rows: &[Self]) -> Box<dyn NewRowsPart + '_>;
}

/// An `INSERT` of one kind's rows, a part of [`NewRows`].
pub trait NewRowsPart: diesel::query_builder::QueryFragment<diesel::pg::Pg> {}

impl<T: diesel::query_builder::QueryFragment<diesel::pg::Pg>> NewRowsPart for T {}

/// The batch's new rows of every kind, and its events' outbox rows, as one PostgreSQL
/// statement: `WITH part0 AS (INSERT …), part1 AS (INSERT …) SELECT 1` — one round trip
/// where a statement a kind cost one each (BENCHMARKS.md, thirteenth session); a single
/// part is sent as it is. A key one part breaks fails the statement, and so the batch, as
/// its own statement did. The server makes every part's rows at once: foreign keys are
/// checked at the statement's end, so a kind's rows may refer to another kind's.
pub(crate) struct NewRows<'a> {
    parts: Vec<Box<dyn NewRowsPart + 'a>>,
}

impl diesel::query_builder::QueryId for NewRows<'_> {
    type QueryId = ();
    // Keyed by the rendered SQL, never by type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for NewRows<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        if let [part] = self.parts.as_slice() {
            return part.walk_ast(out);
        }
        super::update::push_parts(out.reborrow(), self.parts.iter().map(|part| &**part))?;
        out.push_sql(" SELECT 1");
        Ok(())
    }
}

impl<Conn> diesel::RunQueryDsl<Conn> for NewRows<'_> {}

/// Makes a row type a [`DeferredRow`] of a table: `deferred_row!(OrderRow => orders::table)`.
///
/// On PostgreSQL the rows go in one multi-row `INSERT`, a part of the one statement that
/// inserts the batch's new rows of every kind ([`NewRows`]): one round trip for them all
/// (diesel prepares a statement of a varying number of rows anew each time). On SQLite,
/// where there is no round trip to save, each row goes in through the one-row `INSERT`
/// the connection keeps prepared, cheaper there than parsing a multi-row statement every
/// batch.
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

            fn insert_statement(rows: &[Self]) -> Box<dyn $crate::db::NewRowsPart + '_> {
                match rows {
                    [row] => Box::new(::diesel::insert_into($table).values(row)),
                    rows => Box::new(::diesel::insert_into($table).values(rows)),
                }
            }
        }
    };
}

/// A change of a row a write may leave to its batch (module docs): how to apply several at
/// once. Typically a delta or a conditional move keyed by the row's id; the kind merges
/// its updates of one row itself (several writes of a batch may change the same row). The
/// kinds build each change as its one-row `UPDATE … RETURNING` and run them with
/// [`update_all`](super::update_all): on PostgreSQL several as one statement the connection
/// keeps prepared ([`Together`](super::Together)), on SQLite one by one.
pub trait DeferredUpdate: Send + Sized + 'static {
    /// Applies `updates` (at most a hundred, in the order the writes left them). An update
    /// whose row is not there, or no longer matches its condition, fails with
    /// [`diesel::result::Error::NotFound`]: the batch is rolled back and its writes run
    /// alone, so that the write that left it is answered [`DbError::NotApplied`] (only
    /// that: a `NotFound` from anything else a write runs stays a query error).
    fn update_all(conn: &mut DbConnection, updates: &[Self]) -> diesel::QueryResult<()>;
}

/// `Ok` when a deferred kind's statement changed all the `expected` rows;
/// [`diesel::result::Error::NotFound`] otherwise: one of its rows was gone or no longer
/// matched, which fails the batch ([`DeferredUpdate::update_all`]).
pub fn all_changed(changed: usize, expected: usize) -> diesel::QueryResult<()> {
    if changed == expected {
        Ok(())
    } else {
        Err(diesel::result::Error::NotFound)
    }
}

/// The rows deferred in one batch (or one run of a write), grouped by kind in the order
/// each kind was first deferred: a kind whose rows refer to another's (a foreign key) is
/// deferred after it, by the write that defers both.
#[derive(Default)]
pub(crate) struct DeferredWrites {
    groups: Vec<Box<dyn Group>>,
}

impl std::fmt::Debug for DeferredWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredWrites")
            .field("rows", &self.len())
            .finish()
    }
}

impl DeferredWrites {
    pub(crate) fn insert<R: DeferredRow>(&mut self, row: R) {
        let mine = self
            .groups
            .iter_mut()
            .find_map(|group| group.as_any_mut().downcast_mut::<Rows<R>>());
        match mine {
            Some(rows) => rows.0.push(row),
            None => self.groups.push(Box::new(Rows(vec![row]))),
        }
    }

    pub(crate) fn update<U: DeferredUpdate>(&mut self, update: U) {
        let mine = self
            .groups
            .iter_mut()
            .find_map(|group| group.as_any_mut().downcast_mut::<Updates<U>>());
        match mine {
            Some(updates) => updates.0.push(update),
            None => self.groups.push(Box::new(Updates(vec![update]))),
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

    /// Applies every update, kind by kind, then inserts every row and then `outbox`'s
    /// (module docs): on PostgreSQL the rows of every kind in one statement ([`NewRows`]),
    /// on SQLite kind by kind.
    pub(crate) fn flush(
        &self,
        conn: &mut DbConnection,
        outbox: &[crate::events::outbox::OutboxRow],
    ) -> Result<(), DbError> {
        let (updates, inserts): (Vec<_>, Vec<_>) =
            self.groups.iter().partition(|group| group.is_update());
        for group in updates {
            group.flush(conn)?;
        }
        match conn {
            DbConnection::Postgres(pg) => {
                let mut parts: Vec<Box<dyn NewRowsPart + '_>> = inserts
                    .iter()
                    .flat_map(|group| group.insert_statements())
                    .collect();
                parts.extend(crate::events::outbox::insert_statements(outbox));
                while !parts.is_empty() {
                    let rest = parts.split_off(parts.len().min(PARTS_PER_STATEMENT));
                    diesel::RunQueryDsl::execute(NewRows { parts }, pg)?;
                    parts = rest;
                }
            }
            DbConnection::Sqlite(_) => {
                for group in inserts {
                    group.flush(conn)?;
                }
                crate::events::outbox::append(conn, outbox)?;
            }
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
    fn is_update(&self) -> bool;
    fn flush(&self, conn: &mut DbConnection) -> Result<(), DbError>;
    /// A kind of rows' parts of [`NewRows`]; none for updates.
    fn insert_statements(&self) -> Vec<Box<dyn NewRowsPart + '_>>;
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

    fn is_update(&self) -> bool {
        false
    }

    fn flush(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        for chunk in self.0.chunks(ROWS_PER_STATEMENT) {
            R::insert_all(conn, chunk)?;
        }
        Ok(())
    }

    fn insert_statements(&self) -> Vec<Box<dyn NewRowsPart + '_>> {
        self.0
            .chunks(ROWS_PER_STATEMENT)
            .map(R::insert_statement)
            .collect()
    }
}

struct Updates<U>(Vec<U>);

impl<U: DeferredUpdate> Group for Updates<U> {
    fn kind(&self) -> TypeId {
        TypeId::of::<U>()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn absorb(&mut self, mut other: Box<dyn Group>) {
        if let Some(updates) = other.as_any_mut().downcast_mut::<Self>() {
            self.0.append(&mut updates.0);
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_update(&self) -> bool {
        true
    }

    fn flush(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        for chunk in self.0.chunks(ROWS_PER_STATEMENT) {
            U::update_all(conn, chunk).map_err(|error| match error {
                diesel::result::Error::NotFound => DbError::NotApplied,
                error => DbError::from(error),
            })?;
        }
        Ok(())
    }

    fn insert_statements(&self) -> Vec<Box<dyn NewRowsPart + '_>> {
        Vec::new()
    }
}

/// What the writes of one transaction share (`Events::transaction_memo`,
/// `Database::read_in_batch`): one value of each type, made on first use, gone when the
/// transaction ends — committed, or rolled back to run again, when every write starts
/// from nothing again.
#[derive(Default)]
pub struct TransactionMemo {
    values: Vec<(TypeId, Box<dyn Any + Send>)>,
}

impl std::fmt::Debug for TransactionMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionMemo")
            .field("values", &self.values.len())
            .finish()
    }
}

impl TransactionMemo {
    /// The transaction's `T`, made with `T::default()` on first use.
    pub fn get_or_default<T: Default + Send + 'static>(&mut self) -> &mut T {
        let at = match self
            .values
            .iter()
            .position(|(kind, _)| *kind == TypeId::of::<T>())
        {
            Some(at) => at,
            None => {
                self.values
                    .push((TypeId::of::<T>(), Box::new(T::default())));
                self.values.len() - 1
            }
        };
        // The value at `at` was stored under `T`'s type id: it is a `T`.
        self.values[at]
            .1
            .downcast_mut::<T>()
            .expect("a memo value is stored under its own type")
    }
}
