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
