//! llmeval: an LLM evaluation harness.
//!
//! The modules follow the data flow: a [`suite`] file names models and tasks; [`dataset`] rows are
//! rendered into requests by [`prompt`]; a [`model`] answers them in batches; [`metric`]s score the
//! responses and [`stats`] aggregates them; [`run`] drives all of it and writes every sample, as it
//! finishes, into the SQLite [`store`], which every view reads afterwards: [`results`] (the read
//! model of leaderboards), [`report`] (the HTML report), [`gate`] and [`arena`].

pub mod error;
pub mod suite;
pub mod dataset;
pub mod prompt;
pub mod filter;
pub mod pyrandom;
pub mod model;
pub mod metric;
pub mod judge;
pub mod arena;
pub mod gate;
pub mod results;
pub mod report;
pub mod stats;
pub mod store;
pub mod cache;
pub mod run;
pub mod progress;
pub mod util;
pub mod engine;
pub mod tui;
pub mod cli;

pub use error::{Error, Result};
