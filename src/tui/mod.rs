//! Terminal views, each split into state (plain data, unit-testable), render (a pure function of
//! the state into a frame) and an event loop (the only part that touches the terminal).

pub mod leaderboard;
pub mod vote;
