//! Bazaar's service chassis: the platform code every module stands on, and no business
//! rules.
//!
//! Without features it holds what a module's *contract* crate may use — RFC 9457 problem
//! documents ([`problem`]), list pages ([`page`]), [`money`], secrets ([`secret`]) and the resilient
//! remote-client base ([`remote`]) — and nothing that pulls in diesel or actix. The
//! `server` feature adds what implementation crates and the binary need: layered config
//! ([`config`]), the one database code path for SQLite and PostgreSQL ([`db`]), the actix
//! HTTP edge ([`http`]), operations endpoints ([`ops`]) and logging ([`telemetry`]).
//!
//! The chassis depends on no Bazaar crate; every module may depend on it.

pub mod events;
pub mod integer;
pub mod money;
pub mod page;
pub mod port;
pub mod problem;
pub mod remote;
pub mod secret;
pub mod trace;

#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod db;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod module;
#[cfg(feature = "server")]
pub mod ops;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
