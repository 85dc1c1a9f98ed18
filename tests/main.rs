//! The one integration-test binary: real `llmeval` processes against loopback servers.

#[path = "support/server.rs"]
pub mod server;
mod support;

mod arena;
mod cli_output;
mod core_run;
mod engine_ref;
mod faults;
mod gate;
mod judges;
mod leaderboard;
mod metrics_golden;
mod report;
mod resume;
mod suite_errors;
