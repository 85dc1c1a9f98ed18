//! `llmeval leaderboard`: models × task metrics of the chosen runs (value ± half the 95%
//! interval, overall, arena rating) in the terminal, sortable and filterable by suite and run, with
//! each cell's samples a key away; or the same table as plain text.
//!
//! Design decision: the state lays out everything that depends on the terminal's size — the
//! board's visible rows and columns follow the cursor, and the samples are wrapped into screen
//! lines when opened or resized — so scroll positions, pages and search hits are plain line
//! numbers in the state, checked without a terminal; `render` only paints them and `run` is the
//! only code that touches the terminal. Text from models and data is shown with its control
//! characters replaced by visible symbols, so no output can drive the terminal.

mod drill;
mod render;
mod state;
mod term;

pub use drill::{Drill, Hit};
pub use render::render;
pub use state::{BoardColumn, Request, SampleQuery, SortBy, State};
pub use term::run;

#[cfg(test)]
mod tests;

use crate::results::Leaderboard;
use unicode_width::UnicodeWidthChar;

/// `c` as it may be shown on a terminal: C0 controls as their Control Pictures (ESC as `␛`),
/// DEL as `␡`, C1 controls as `�`.
pub fn visible(c: char) -> char {
    match c {
        '\0'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
        '\u{7f}' => '\u{2421}',
        '\u{80}'..='\u{9f}' => '\u{fffd}',
        c => c,
    }
}

/// One line of text safe to print: tabs as spaces, line breaks as `⏎`, other controls visible.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' => ' ',
            '\n' => '⏎',
            c => visible(c),
        })
        .collect()
}

/// Display width of `s` in terminal columns.
pub fn width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// `s` cut to at most `max` columns, ending in `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if w + cw + 1 > max {
            break;
        }
        out.push(c);
        w += cw;
    }
    if max > 0 {
        out.push('…');
    }
    out
}

/// The board as plain text: the columns the terminal view shows by default (model, overall, arena
/// when there are battles, whole-task metrics), in the leaderboard's order (overall, highest
/// first), padded to align, control characters made visible.
pub fn plain(board: &Leaderboard) -> String {
    let columns = state::columns(board, false);
    let header: Vec<String> = columns.iter().map(|c| one_line(&state::header_label(board, c))).collect();
    let rows: Vec<Vec<String>> = (0..board.rows.len()).map(|r| columns.iter().map(|c| one_line(&state::cell_text(board, r, c))).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(width(c));
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(widths[i] - width(c));
                // Text left, figures right.
                if i == 0 { format!("{c}{pad}") } else { format!("{pad}{c}") }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&header);
    out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}
