//! Bazaar's composition root: reads the config, decides for every module whether it runs
//! here (local), elsewhere (remote, through its contract crate's HTTP client) or not at all,
//! wires the ports, and serves the HTTP API. No business rules live here.
//!
//! Which modules can be local is decided at build time by cargo features (`catalog`,
//! `orders`, `billing`, `notifications`); which ones are local at run time by
//! `modules.<name>.mode`.

mod app;
mod cli;
mod config;
#[cfg(feature = "catalog")]
mod demo;

pub use app::{Composition, compose, serve, start};
pub use cli::run;
pub use config::Config;
