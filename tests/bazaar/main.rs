//! End-to-end tests of the `bazaar` binary and its composition root: one test binary.

mod architecture;
mod cli;
mod deploy;
mod faults;
mod notifications;
mod openapi;
mod orders;
mod placement;
mod round_trips;
mod serve;
mod split;
mod support;
