//! `UPDATE`s whose prepared statement the connection keeps.
//!
//! Diesel never keeps an `UPDATE`'s prepared statement: a changeset with optional fields can
//! render different SQL for the same Rust type, so it gives up on the whole statement kind,
//! and SQLite parses and plans every update afresh — on the order path that cost more CPU
//! than running the statements. [`update`] builds the same statement from the same parts
//! (a table, a predicate, a changeset), but lets the cache keep it, keyed by its rendered
//! SQL, never by its Rust type: a changeset that renders differently gets a statement of
//! its own, never a wrong one.

use diesel::backend::Backend;
use diesel::expression::{AppearsOnTable, Expression};
use diesel::query_builder::{AsChangeset, AstPass, QueryFragment, QueryId};
use diesel::query_source::Table;
use diesel::sql_types::BoolOrNullableBool;
use diesel::{QueryResult, RunQueryDsl};

/// `UPDATE table SET changes WHERE predicate`; run it with `.execute(conn)`, which answers
/// the rows changed. `changes` must set at least one column (an all-`None` changeset is
/// an SQL error here, where diesel's own update reports it as `EmptyChangeset`). Keep
/// `diesel::update` for a predicate with an `IN` list: no cache can keep those.
pub fn update<T, W, V>(table: T, predicate: W, changes: V) -> Update<T::FromClause, W, V::Changeset>
where
    T: Table,
    W: Expression + AppearsOnTable<T>,
    W::SqlType: BoolOrNullableBool,
    V: AsChangeset<Target = T>,
{
    Update {
        table: table.from_clause(),
        predicate,
        changes: changes.as_changeset(),
    }
}

/// See [`update`].
#[derive(Debug, Clone)]
pub struct Update<T, W, V> {
    table: T,
    predicate: W,
    changes: V,
}

impl<T, W, V> QueryId for Update<T, W, V> {
    type QueryId = ();
    // Keyed by the rendered SQL, never by type: see the module documentation.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T, W, V, DB> QueryFragment<DB> for Update<T, W, V>
where
    DB: Backend,
    T: QueryFragment<DB>,
    W: QueryFragment<DB>,
    V: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE ");
        self.table.walk_ast(out.reborrow())?;
        out.push_sql(" SET ");
        self.changes.walk_ast(out.reborrow())?;
        out.push_sql(" WHERE ");
        self.predicate.walk_ast(out.reborrow())
    }
}

impl<T, W, V, Conn> RunQueryDsl<Conn> for Update<T, W, V> {}

impl<T, W, V> Update<T, W, V> {
    /// `… RETURNING selection`: the changed rows come back with the statement, where a
    /// `SELECT` after it would cost another round trip on PostgreSQL. Run it with
    /// `.get_results(conn)` (or `.get_result(conn)` for one row, `NotFound` when none
    /// changed). Both backends have it (SQLite since 3.35).
    pub fn returning<S>(self, selection: S) -> UpdateReturning<T, W, V, S>
    where
        S: Expression,
    {
        UpdateReturning {
            update: self,
            selection,
        }
    }
}

/// See [`Update::returning`].
#[derive(Debug, Clone)]
pub struct UpdateReturning<T, W, V, S> {
    update: Update<T, W, V>,
    selection: S,
}

impl<T, W, V, S> QueryId for UpdateReturning<T, W, V, S> {
    type QueryId = ();
    // Keyed by the rendered SQL, never by type: see the module documentation.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T, W, V, S, DB> QueryFragment<DB> for UpdateReturning<T, W, V, S>
where
    DB: Backend,
    Update<T, W, V>: QueryFragment<DB>,
    S: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.update.walk_ast(out.reborrow())?;
        out.push_sql(" RETURNING ");
        self.selection.walk_ast(out.reborrow())
    }
}

impl<T, W, V, S> diesel::query_builder::Query for UpdateReturning<T, W, V, S>
where
    S: Expression,
{
    type SqlType = S::SqlType;
}

impl<T, W, V, S, Conn> RunQueryDsl<Conn> for UpdateReturning<T, W, V, S> {}

/// Most one-row statements a [`Together`] the connection keeps prepared joins: one kept
/// statement a kind and a number of rows (and shape) up to it — as many as a batch of a
/// few dozen concurrent requests changes. A larger one is planned each time it runs,
/// which its rows amortise.
pub const KEPT_TOGETHER: usize = 32;

/// One-row `UPDATE … RETURNING`s of one kind run as one PostgreSQL statement — `WITH part0
/// AS (UPDATE …), part1 AS (UPDATE …) SELECT * FROM part0 UNION ALL SELECT * FROM part1 …`:
/// one round trip for them all, answering the rows each returned (in no given order).
///
/// Why this shape: each part is the one-row statement, found by its key, so the plan the
/// server keeps for the whole is that of a row found through its key, right however the
/// tables grow; the connection keeps it prepared (one a number of parts, up to
/// [`KEPT_TOGETHER`]), so it is neither parsed nor planned again. A join with the rows'
/// values (`UPDATE … FROM unnest(…)`) could only be planned on every run: a kept plan,
/// made while the tables were small, scanned them whole once they had grown
/// (BENCHMARKS.md, twelfth and thirteenth sessions). The parts go in the order of their
/// SQL, so that parts of several shapes (a changeset that leaves a column out) make one
/// text a mix of shapes, not one an order. Each part sees the tables as the statement
/// began: a row two parts would change is changed by one of them only, and the other
/// returns nothing — a kind merges its changes of one row itself (`DeferredUpdate`). The
/// last update statement of a batch also carries the batch's new rows as parts after the
/// updates' (`Riders`), which the final `SELECT` does not read: the server runs them once
/// it has run the updates.
pub struct Together<'r, Q> {
    parts: Vec<Q>,
    /// The batch's new rows, carried after the updates (`Riders`).
    riders: Vec<Box<dyn super::NewRowsPart + 'r>>,
}

impl<Q> std::fmt::Debug for Together<'_, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Together")
            .field("parts", &self.parts.len())
            .field("riders", &self.riders.len())
            .finish()
    }
}

impl<'r, Q: QueryFragment<diesel::pg::Pg>> Together<'r, Q> {
    /// The parts, carrying `riders` (`Riders`) after them.
    pub(crate) fn new(
        parts: Vec<Q>,
        riders: Vec<Box<dyn super::NewRowsPart + 'r>>,
    ) -> QueryResult<Self> {
        let mut shaped = parts
            .into_iter()
            .map(|part| {
                let mut sql = <diesel::pg::Pg as Backend>::QueryBuilder::default();
                part.to_sql(&mut sql, &diesel::pg::Pg)?;
                Ok((diesel::query_builder::QueryBuilder::finish(sql), part))
            })
            .collect::<QueryResult<Vec<_>>>()?;
        shaped.sort_by(|(one, _), (other, _)| one.cmp(other));
        Ok(Self {
            parts: shaped.into_iter().map(|(_, part)| part).collect(),
            riders,
        })
    }
}

impl<Q> QueryId for Together<'_, Q> {
    type QueryId = ();
    // Keyed by the rendered SQL, never by type: see the module documentation.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: QueryFragment<diesel::pg::Pg>> QueryFragment<diesel::pg::Pg> for Together<'_, Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        if self.parts.len() > KEPT_TOGETHER {
            out.unsafe_to_cache_prepared();
        }
        // The riders come after the updates and the final `SELECT` reads none of them, so
        // the server runs them once it has run the updates: the new rows go in last, as
        // a statement of their own did.
        let updates = self
            .parts
            .iter()
            .map(|part| part as &dyn QueryFragment<diesel::pg::Pg>);
        let riders = self
            .riders
            .iter()
            .map(|rider| &**rider as &dyn QueryFragment<diesel::pg::Pg>);
        push_parts(out.reborrow(), updates.chain(riders))?;
        for at in 0..self.parts.len() {
            out.push_sql(if at == 0 {
                " SELECT * FROM "
            } else {
                " UNION ALL SELECT * FROM "
            });
            out.push_sql(&format!("part{at}"));
        }
        Ok(())
    }
}

/// `WITH part0 AS (…), part1 AS (…), …`: the statements `parts` named for the rest of
/// one statement ([`Together`], and the batch's new rows, `NewRows`).
pub(crate) fn push_parts<'b, P>(
    mut out: AstPass<'_, 'b, diesel::pg::Pg>,
    parts: impl Iterator<Item = &'b P>,
) -> QueryResult<()>
where
    P: QueryFragment<diesel::pg::Pg> + ?Sized + 'b,
{
    out.push_sql("WITH ");
    for (at, part) in parts.enumerate() {
        if at > 0 {
            out.push_sql(", ");
        }
        out.push_sql(&format!("part{at} AS ("));
        part.walk_ast(out.reborrow())?;
        out.push_sql(")");
    }
    Ok(())
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Together<'_, Q> {
    type SqlType = Q::SqlType;
}

impl<Q, Conn> RunQueryDsl<Conn> for Together<'_, Q> {}

/// Runs `statements`, one-row `UPDATE … RETURNING`s of one kind (each built with
/// [`update`]), and answers the rows they returned, in no given order: on PostgreSQL
/// several as one statement ([`Together`]), which also carries `riders`, the batch's new
/// rows (`Riders`: the kind hands them to its last statement), on SQLite one after the
/// other, each the one-row statement the connection keeps prepared (no round trip to save
/// there; SQLite's batches have no riders).
pub fn update_all<'q, 'r, Q, U>(
    conn: &mut super::DbConnection,
    statements: Vec<Q>,
    riders: &mut super::Riders<'r>,
) -> QueryResult<Vec<U>>
where
    Q: QueryFragment<diesel::pg::Pg> + diesel::query_builder::Query,
    Q: diesel::query_dsl::LoadQuery<'q, diesel::PgConnection, U>,
    Q: diesel::query_dsl::LoadQuery<'q, diesel::SqliteConnection, U>,
    Together<'r, Q>: diesel::query_dsl::LoadQuery<'q, diesel::PgConnection, U>,
{
    match conn {
        // With new rows to carry, even one update goes as a `Together`.
        super::DbConnection::Postgres(pg) if statements.len() > 1 || riders.carries() => {
            Together::new(statements, riders.take())?.load(pg)
        }
        super::DbConnection::Postgres(pg) => {
            let mut rows = Vec::with_capacity(statements.len());
            for statement in statements {
                rows.extend(statement.load(pg)?);
            }
            Ok(rows)
        }
        super::DbConnection::Sqlite(sqlite) => {
            let mut rows = Vec::with_capacity(statements.len());
            for statement in statements {
                rows.extend(statement.load(sqlite)?);
            }
            Ok(rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;

    use super::update;

    diesel::table! {
        items (id) {
            id -> Integer,
            name -> Text,
            note -> Nullable<Text>,
        }
    }

    /// Through the `MultiConnection`, as repositories run it: three calls, one statement
    /// prepared and kept.
    #[test]
    fn repeated_updates_prepare_their_statement_once() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use diesel::connection::InstrumentationEvent;

        let mut sqlite = SqliteConnection::establish(":memory:").expect("opens");
        sqlite
            .batch_execute(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT);
                 INSERT INTO items VALUES (1, 'a', NULL);",
            )
            .expect("schema");
        let kept = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&kept);
        sqlite.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::CacheQuery { .. } = event {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut conn = crate::db::DbConnection::Sqlite(sqlite);
        for round in 0..3 {
            let changed = update(
                items::table,
                items::id.eq(1),
                items::note.eq(Some(format!("round {round}"))),
            )
            .execute(&mut conn)
            .expect("updates");
            assert_eq!(changed, 1);
        }
        assert_eq!(kept.load(Ordering::SeqCst), 1, "prepared once, then reused");
        // diesel's own update, for contrast, is never kept.
        diesel::update(items::table.find(1))
            .set(items::name.eq("b"))
            .execute(&mut conn)
            .expect("updates");
        assert_eq!(kept.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn updates_the_matching_rows_and_answers_their_count() {
        let mut conn = SqliteConnection::establish(":memory:").expect("opens");
        conn.batch_execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT);
             INSERT INTO items VALUES (1, 'a', NULL), (2, 'b', NULL), (3, 'c', NULL);",
        )
        .expect("schema");
        for round in 0..3 {
            let changed = update(
                items::table,
                items::id.ge(2).and(items::name.ne("c")),
                (items::note.eq(Some(format!("round {round}"))),),
            )
            .execute(&mut conn)
            .expect("updates");
            assert_eq!(changed, 1);
        }
        let notes: Vec<Option<String>> = items::table
            .order(items::id)
            .select(items::note)
            .load(&mut conn)
            .expect("reads");
        assert_eq!(notes, [None, Some("round 2".into()), None]);
        let returned: Vec<(i32, String)> = update(
            items::table,
            items::id.ge(2),
            items::name.eq(items::name.concat("!")),
        )
        .returning((items::id, items::name))
        .get_results(&mut conn)
        .expect("updates and returns");
        assert_eq!(returned.len(), 2);
        assert!(returned.contains(&(2, "b!".into())) && returned.contains(&(3, "c!".into())));
        let none = update(items::table, items::id.eq(9), items::name.eq("z"))
            .execute(&mut conn)
            .expect("updates nothing");
        assert_eq!(none, 0);
    }
}
