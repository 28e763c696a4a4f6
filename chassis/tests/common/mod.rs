//! What the chassis's integration tests share: a tiny module schema (`items`) on both
//! backends, and an error type for write closures.
#![allow(dead_code, unreachable_pub)] // each test binary uses a part

use chassis::db::{DbError, Migrations};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

static SQLITE: EmbeddedMigrations = embed_migrations!("tests/migrations/sqlite");
static POSTGRES: EmbeddedMigrations = embed_migrations!("tests/migrations/postgres");
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

diesel::table! {
    items (id) {
        id -> Text,
        n -> BigInt,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("refused on purpose")]
    Refused,
}

impl From<diesel::result::Error> for TestError {
    fn from(error: diesel::result::Error) -> Self {
        TestError::Db(DbError::from(error))
    }
}
