//! The library's one error type and the process exit codes.
//!
//! Every variant carries what the user needs to fix the problem: the file, the line or field, and
//! the offending value. The CLI prints the message with its chain; nothing in the library panics on
//! bad input.

use std::path::PathBuf;

/// Process exit codes, documented in the README.
pub mod exit {
    /// Everything ran and nothing failed.
    pub const SUCCESS: u8 = 0;
    /// The command ran, but the outcome is a failure: `run` finished with errored items (without
    /// `--allow-errors`), or `gate` found a regression.
    pub const FAILURE: u8 = 1;
    /// The command could not do its work: bad arguments, a malformed suite or data file, an
    /// unreadable database.
    pub const ERROR: u8 = 2;
    /// Interrupted by Ctrl-C; `llmeval run --resume` continues where it stopped.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A suite (or other config) file is malformed; `location` is `path:line` or `path`.
    #[error("{location}: {message}")]
    Config { location: String, message: String },
    /// A data file row is malformed or a template fails on it.
    #[error("{location}: {message}")]
    Data { location: String, message: String },
    // The cause is in the message and is not the error's `source`, so the CLI's chain does not
    // print it twice and a message shown on its own still says why.
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: std::io::Error },
    #[error("database {path}: {cause}")]
    Db { path: PathBuf, cause: rusqlite::Error },
    #[error("database {path}: {message}")]
    Store { path: PathBuf, message: String },
    /// A request that cannot be made at all (not a transient model failure).
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    #[error("{0}")]
    Usage(String),
    /// A run that stopped part-way; what finished is stored and `--resume` continues it.
    #[error("run {run} stopped; its finished items are stored, and `{resume}` continues once the cause is fixed")]
    Stopped { run: String, resume: String, source: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { location: location.into(), message: message.into() }
    }
    pub fn data(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Data { location: location.into(), message: message.into() }
    }
}
