//! Writes a write leaves to its batch: rows of one kind inserted, or rows of one kind
//! updated, from every write of a batch, together just before the batch commits — on
//! PostgreSQL the updates in one statement a kind, the new rows of every kind and the
//! outbox's as parts of the last of them ([`Riders`]), or in one of their own
//! ([`Events::insert_at_commit`](crate::events::Events::insert_at_commit),
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

/// Most rows one call of a kind's `insert_all` or `update_all` takes (on PostgreSQL the
/// batch's new rows go in as one statement of arrays, [`InsertColumns`], whatever their
/// number): far below either backend's limit on a statement's bound values at the widths
/// of the rows deferred (≤ 30 columns).
const ROWS_PER_STATEMENT: usize = 100;

/// A row a write may leave to its batch (module docs): how to insert several at once.
/// Implemented by [`deferred_row!`](crate::deferred_row), one line per kind of row.
pub trait DeferredRow: Send + Sized + 'static {
    /// Inserts `rows` (at most a hundred): on SQLite, each through the one-row `INSERT`
    /// the connection keeps prepared; on PostgreSQL as [`InsertColumns`].
    fn insert_all(conn: &mut DbConnection, rows: &[Self]) -> diesel::QueryResult<()>;

    /// The PostgreSQL `INSERT` of `rows`, one part of the statement that inserts the
    /// batch's new rows of every kind ([`NewRows`]).
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

/// A batch's new rows on PostgreSQL, handed to the last update statement of the batch
/// ([`DeferredUpdate::update_all`]), which carries them as parts of its own
/// ([`Together`](super::Together)): `WITH part0 AS (UPDATE …), part1 AS (INSERT …) SELECT *
/// FROM part0`: the batch's updates and new rows in one round trip. PostgreSQL 15 runs the
/// parts the final `SELECT` reads (the updates) as it reads them, and the others (the
/// inserts) after it, so the rows still go in after the updates and the locks come in the
/// documented order. Its manual promises no order among a statement's parts: were that to
/// change, two instances' batches could meet in a deadlock, which fails one batch, whose
/// writes then run alone — slower, never wrong. A batch whose updates ran no statement
/// sends its new rows in a statement of their own.
pub struct Riders<'a> {
    parts: Vec<Box<dyn NewRowsPart + 'a>>,
}

impl<'a> Riders<'a> {
    /// No new rows: for every statement of a batch but its last.
    pub fn none() -> Self {
        Self { parts: Vec::new() }
    }

    /// Runs `run` on each of `items` in turn (the statements of a kind, the kinds of a
    /// batch), handing these riders to the last and none to the others.
    pub fn to_the_last<T, E>(
        &mut self,
        items: impl ExactSizeIterator<Item = T>,
        mut run: impl FnMut(T, &mut Riders<'a>) -> Result<(), E>,
    ) -> Result<(), E> {
        let last = items.len().saturating_sub(1);
        for (at, item) in items.enumerate() {
            if at == last {
                run(item, self)?;
            } else {
                run(item, &mut Riders::none())?;
            }
        }
        Ok(())
    }

    /// Whether it holds new rows still.
    pub(crate) fn carries(&self) -> bool {
        !self.parts.is_empty()
    }

    pub(crate) fn take(&mut self) -> Vec<Box<dyn NewRowsPart + 'a>> {
        std::mem::take(&mut self.parts)
    }
}

impl std::fmt::Debug for Riders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Riders")
            .field("parts", &self.parts.len())
            .finish()
    }
}

/// Makes a row type a [`DeferredRow`] of a table, naming the table's module and the
/// columns the row sets (each a field of the row of the same name):
/// `deferred_row!(OrderRow => orders { id, status, total_amount })`.
///
/// On PostgreSQL the rows go in as one `INSERT … SELECT * FROM unnest(…)` binding each
/// column as an array ([`InsertColumns`]), a part of the one statement that inserts the
/// batch's new rows of every kind ([`NewRows`]): one round trip for them all, in a text that
/// does not depend on the number of rows, so the connection keeps it prepared. On SQLite,
/// where there is no round trip to save, each row goes in through the one-row `INSERT`
/// the connection keeps prepared, cheaper there than parsing a multi-row statement every
/// batch.
#[macro_export]
macro_rules! deferred_row {
    ($row:ty => $table:ident { $($column:ident),+ $(,)? }) => {
        impl $crate::db::DeferredRow for $row {
            fn insert_all(
                conn: &mut $crate::db::DbConnection,
                rows: &[Self],
            ) -> ::diesel::QueryResult<()> {
                use ::diesel::RunQueryDsl as _;
                match (conn, rows) {
                    ($crate::db::DbConnection::Postgres(conn), [row]) => {
                        ::diesel::insert_into($table::table).values(row).execute(conn)?;
                    }
                    ($crate::db::DbConnection::Postgres(conn), rows) => {
                        $crate::insert_columns!(rows => $table { $($column),+ }).execute(conn)?;
                    }
                    ($crate::db::DbConnection::Sqlite(conn), rows) => {
                        for row in rows {
                            ::diesel::insert_into($table::table).values(row).execute(conn)?;
                        }
                    }
                }
                Ok(())
            }

            fn insert_statement(rows: &[Self]) -> Box<dyn $crate::db::NewRowsPart + '_> {
                // The columns named are the row's fields, every one: a field left out
                // would go in on SQLite (whose insert takes the whole row) and not on
                // PostgreSQL. This pattern names them all, so it does not compile then.
                let _every_field = |row: &Self| {
                    let Self { $($column: _),+ } = row;
                };
                Box::new($crate::insert_columns!(rows => $table { $($column),+ }))
            }
        }
    };
}

/// The [`InsertColumns`] of `rows` into `table`'s `columns` (each a field of the rows of
/// the same name): `insert_columns!(rows => outbox { event_id, envelope })`.
#[macro_export]
#[doc(hidden)]
macro_rules! insert_columns {
    ($rows:expr => $table:ident { $($column:ident),+ }) => {
        $crate::db::InsertColumns::new(
            $table::table,
            ::std::vec![$(
                $crate::db::insert_column::<<$table::$column as ::diesel::Expression>::SqlType, _>(
                    <$table::$column as ::diesel::Column>::NAME,
                    $rows.iter().map(|row| &row.$column).collect(),
                )
            ),+],
        )
    };
}

/// New rows of one table as one PostgreSQL statement whose text does not depend on how
/// many there are: `INSERT INTO t (a, b) SELECT * FROM unnest($1, $2)`, each column bound
/// as one array. A multi-row `VALUES` list is a new text for every number of rows, which
/// the server parses and plans on every execution (most of the planning an order cost,
/// BENCHMARKS.md, fourteenth session); this text the connection keeps prepared, and its
/// plan (a function scan feeding the insert, no table read) is right whatever the tables
/// hold. Built by [`deferred_row!`](crate::deferred_row).
pub struct InsertColumns<'a, T> {
    table: T,
    columns: Vec<(&'static str, Box<dyn ColumnArray + 'a>)>,
}

impl<'a, T> InsertColumns<'a, T> {
    #[doc(hidden)]
    pub fn new(table: T, columns: Vec<(&'static str, Box<dyn ColumnArray + 'a>)>) -> Self {
        Self { table, columns }
    }
}

impl<T> std::fmt::Debug for InsertColumns<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InsertColumns")
            .field(
                "columns",
                &self
                    .columns
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// One column of [`InsertColumns`], named `name`, of SQL type `ST`: its value in every row.
#[doc(hidden)]
pub fn insert_column<'a, ST, V>(
    name: &'static str,
    values: Vec<&'a V>,
) -> (&'static str, Box<dyn ColumnArray + 'a>)
where
    ST: 'static,
    diesel::pg::Pg: diesel::sql_types::HasSqlType<ST>,
    V: diesel::serialize::ToSql<ST, diesel::pg::Pg> + std::fmt::Debug + 'a,
{
    (
        name,
        Box::new(Column::<ST, V> {
            values,
            sql_type: std::marker::PhantomData,
        }),
    )
}

/// A column of [`InsertColumns`]: its values bound as one array.
#[doc(hidden)]
pub trait ColumnArray {
    fn push_bind<'b>(
        &'b self,
        out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()>;
}

struct Column<'a, ST, V> {
    values: Vec<&'a V>,
    sql_type: std::marker::PhantomData<ST>,
}

impl<ST, V> ColumnArray for Column<'_, ST, V>
where
    ST: 'static,
    diesel::pg::Pg: diesel::sql_types::HasSqlType<ST>,
    V: diesel::serialize::ToSql<ST, diesel::pg::Pg> + std::fmt::Debug,
{
    fn push_bind<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        out.push_bind_param::<diesel::sql_types::Array<ST>, _>(&self.values)
    }
}

impl<T> diesel::query_builder::QueryId for InsertColumns<'_, T> {
    type QueryId = ();
    // Keyed by the rendered SQL, never by type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T> diesel::query_builder::QueryFragment<diesel::pg::Pg> for InsertColumns<'_, T>
where
    T: diesel::query_builder::QueryFragment<diesel::pg::Pg>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        out.push_sql("INSERT INTO ");
        self.table.walk_ast(out.reborrow())?;
        out.push_sql(" (");
        for (at, (name, _)) in self.columns.iter().enumerate() {
            if at > 0 {
                out.push_sql(", ");
            }
            out.push_identifier(name)?;
        }
        out.push_sql(") SELECT * FROM unnest(");
        for (at, (_, values)) in self.columns.iter().enumerate() {
            if at > 0 {
                out.push_sql(", ");
            }
            values.push_bind(out.reborrow())?;
        }
        out.push_sql(")");
        Ok(())
    }
}

impl<T, Conn> diesel::RunQueryDsl<Conn> for InsertColumns<'_, T> {}

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
    ///
    /// `riders` are the batch's new rows on PostgreSQL: the kind hands them to the last
    /// statement it runs ([`update_all`](super::update_all)), which carries them as parts
    /// of its own (one round trip for the batch's updates and new rows), and
    /// [`Riders::none`] to any statement before it.
    fn update_all(
        conn: &mut DbConnection,
        updates: &[Self],
        riders: &mut Riders<'_>,
    ) -> diesel::QueryResult<()>;
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
        match conn {
            DbConnection::Postgres(_) => {
                // A part binds an array a column: however many rows and kinds, the
                // statement stays far below PostgreSQL's 65,535 bound values.
                let mut riders = Riders {
                    parts: inserts
                        .iter()
                        .filter_map(|group| group.insert_statement())
                        .chain(crate::events::outbox::insert_statement(outbox))
                        .collect(),
                };
                // The new rows ride with the last update statement, after every update
                // of the batch, as they went in after them as a statement of their own.
                riders.to_the_last(updates.iter(), |group, riders| group.flush(conn, riders))?;
                if let DbConnection::Postgres(pg) = conn
                    && riders.carries()
                {
                    let parts = riders.take();
                    diesel::RunQueryDsl::execute(NewRows { parts }, pg)?;
                }
            }
            DbConnection::Sqlite(_) => {
                for group in updates {
                    group.flush(conn, &mut Riders::none())?;
                }
                for group in inserts {
                    group.flush(conn, &mut Riders::none())?;
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
    /// Writes the kind's rows (SQLite) or applies its updates, the last statement of
    /// which carries `riders` on PostgreSQL (updates only).
    fn flush(&self, conn: &mut DbConnection, riders: &mut Riders<'_>) -> Result<(), DbError>;
    /// A kind of rows' part of [`NewRows`]; none for updates.
    fn insert_statement(&self) -> Option<Box<dyn NewRowsPart + '_>>;
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

    fn flush(&self, conn: &mut DbConnection, _riders: &mut Riders<'_>) -> Result<(), DbError> {
        for chunk in self.0.chunks(ROWS_PER_STATEMENT) {
            R::insert_all(conn, chunk)?;
        }
        Ok(())
    }

    fn insert_statement(&self) -> Option<Box<dyn NewRowsPart + '_>> {
        Some(R::insert_statement(&self.0))
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

    fn flush(&self, conn: &mut DbConnection, riders: &mut Riders<'_>) -> Result<(), DbError> {
        riders.to_the_last(self.0.chunks(ROWS_PER_STATEMENT), |chunk, riders| {
            U::update_all(conn, chunk, riders).map_err(|error| match error {
                diesel::result::Error::NotFound => DbError::NotApplied,
                error => DbError::from(error),
            })
        })
    }

    fn insert_statement(&self) -> Option<Box<dyn NewRowsPart + '_>> {
        None
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
