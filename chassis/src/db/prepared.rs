//! Statements of fixed SQL text, with their values bound, that the connection keeps
//! prepared.
//!
//! Diesel's `sql_query` (and `sql` literals) are never kept: the connection sends their
//! text to be parsed and planned on every run. For a statement diesel's query builder cannot
//! express — the `UPDATE … FROM unnest($1::text[], …)` that applies a batch's deferred
//! updates of a kind on PostgreSQL (`deferred`) — that planning cost the server more than
//! running it. [`prepared`] builds the same statement from its text, with `?` where each
//! value goes, and lets the cache keep it, keyed by its rendered SQL.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Untyped;
use diesel::{QueryResult, RunQueryDsl};

/// `sql` with its `?`s replaced by `binds`, in order: a tuple of values made expressions
/// of their SQL types (`value.into_sql::<Array<Text>>()`). Run it with `.execute(conn)`,
/// or `.load(conn)` into a `QueryableByName` type. `sql` must hold exactly as many `?` as
/// there are binds, and no other (a literal `?` would be taken for a value's place).
pub fn prepared<B>(sql: &'static str, binds: B) -> Prepared<B> {
    Prepared { sql, binds }
}

/// See [`prepared`].
#[derive(Debug, Clone)]
pub struct Prepared<B> {
    sql: &'static str,
    binds: B,
}

impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    // Keyed by the rendered SQL: one text, one statement kept.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B, DB> QueryFragment<DB> for Prepared<B>
where
    DB: Backend,
    B: Binds<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let mut parts = self.sql.split('?');
        out.push_sql(parts.next().unwrap_or_default());
        self.binds.walk_binds(&mut out, &mut parts)?;
        for rest in parts {
            // More `?` than values: the statement would be malformed.
            out.push_sql("?");
            out.push_sql(rest);
        }
        Ok(())
    }
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

impl<B, Conn> RunQueryDsl<Conn> for Prepared<B> {}

/// The values of a [`Prepared`] statement: a tuple of expressions, each rendered in the
/// place of the next `?`.
pub trait Binds<DB: Backend> {
    /// Renders each value, then the text up to the next `?`.
    fn walk_binds<'b>(
        &'b self,
        out: &mut AstPass<'_, 'b, DB>,
        parts: &mut std::str::Split<'static, char>,
    ) -> QueryResult<()>;
}

macro_rules! binds_for_tuple {
    ($($value:ident $index:tt),+) => {
        impl<DB: Backend, $($value: QueryFragment<DB>),+> Binds<DB> for ($($value,)+) {
            fn walk_binds<'b>(
                &'b self,
                out: &mut AstPass<'_, 'b, DB>,
                parts: &mut std::str::Split<'static, char>,
            ) -> QueryResult<()> {
                $(
                    self.$index.walk_ast(out.reborrow())?;
                    out.push_sql(parts.next().unwrap_or_default());
                )+
                Ok(())
            }
        }
    };
}

binds_for_tuple!(A 0);
binds_for_tuple!(A 0, B 1);
binds_for_tuple!(A 0, B 1, C 2);
binds_for_tuple!(A 0, B 1, C 2, D 3);
binds_for_tuple!(A 0, B 1, C 2, D 3, E 4);
binds_for_tuple!(A 0, B 1, C 2, D 3, E 4, F 5);
binds_for_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
binds_for_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
