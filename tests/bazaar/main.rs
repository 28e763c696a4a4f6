//! End-to-end tests of the `bazaar` binary and its composition root: one test binary.

mod architecture;
mod cli;
mod faults;
mod notifications;
mod openapi;
mod orders;
mod serve;
mod support;
