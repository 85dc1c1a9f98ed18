//! The board's state: the runs shown, filters, sort, cursor and the visible window of the table,
//! the open drill-down and the help overlay. Keys change it; nothing here touches a terminal.

use super::drill::{Drill, DrillAction};
use super::width;
use crate::results::{Arena, Leaderboard, RunData, SampleView, SortKey, ARENA_BOOTSTRAP, ARENA_SEED};
use crate::store::JudgedPair;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::HashMap;

/// A column of the board as shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardColumn {
    Model,
    Overall,
    Arena,
    /// Index into the leaderboard's columns.
    Metric(usize),
}

/// What the rows are sorted by; a metric by its identity (suite, task, metric, category), so the
/// sort survives a change of filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    Model,
    Overall,
    Arena,
    Metric(String, String, String, String),
}

/// The samples a drill-down shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleQuery {
    /// Runs to read them from.
    pub runs: Vec<String>,
    pub model: String,
    /// `None`: every task of the model.
    pub task: Option<String>,
    pub category: Option<String>,
    pub title: String,
}

impl SampleQuery {
    pub fn matches(&self, s: &SampleView) -> bool {
        self.runs.contains(&s.run_id)
            && s.model == self.model
            && self.task.as_ref().is_none_or(|t| *t == s.task)
            && self.category.as_ref().is_none_or(|c| s.category.as_deref() == Some(c.as_str()))
    }
}

/// What the event loop must fetch for the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Samples(SampleQuery),
}

/// Widest a label or cell is drawn (longer ones end in `…`).
const MAX_MODEL_WIDTH: usize = 32;
const MAX_COLUMN_WIDTH: usize = 26;
/// Lines of the board around its table: title, table header (two lines), detail, keys.
const BOARD_CHROME: usize = 5;
/// Blank columns between two table columns.
pub const GAP: usize = 2;

/// The board's columns: model, overall, arena (when any row has a rating), then the metric columns
/// (whole-task ones; with `categories`, each task's categories after it).
pub fn columns(board: &Leaderboard, categories: bool) -> Vec<BoardColumn> {
    let mut out = vec![BoardColumn::Model, BoardColumn::Overall];
    if board.rows.iter().any(|r| r.arena.is_some()) {
        out.push(BoardColumn::Arena);
    }
    out.extend((0..board.columns.len()).filter(|&i| categories || board.columns[i].category.is_empty()).map(BoardColumn::Metric));
    out
}

/// A column's name on one line (`task · metric / category`).
pub fn header_label(board: &Leaderboard, c: &BoardColumn) -> String {
    match c {
        BoardColumn::Model => "model".into(),
        BoardColumn::Overall => "overall".into(),
        BoardColumn::Arena => "arena".into(),
        BoardColumn::Metric(i) => board.columns[*i].label.clone(),
    }
}

/// A column's name on two lines: the task, then the metric (and category).
pub fn header_lines(board: &Leaderboard, c: &BoardColumn) -> (String, String) {
    match c {
        BoardColumn::Metric(i) => {
            let label = &board.columns[*i].label;
            match label.split_once(" · ") {
                Some((task, rest)) => (task.to_string(), rest.to_string()),
                None => (label.clone(), String::new()),
            }
        }
        BoardColumn::Overall => ("overall".into(), "0–1".into()),
        BoardColumn::Arena => ("arena".into(), "rating".into()),
        BoardColumn::Model => ("model".into(), String::new()),
    }
}

/// What a cell shows: the row's label, the overall (three decimals), the arena rating ± half its
/// interval, or a metric's value ± half its interval; `—` for nothing.
pub fn cell_text(board: &Leaderboard, row: usize, c: &BoardColumn) -> String {
    let r = &board.rows[row];
    match c {
        BoardColumn::Model => r.label.clone(),
        BoardColumn::Overall => r.overall.map_or("—".into(), |v| format!("{v:.3}")),
        BoardColumn::Arena => match &r.arena {
            Some(a) => match a.ci_low.zip(a.ci_high) {
                Some((lo, hi)) => format!("{:.0} ± {:.0}", a.rating, (hi - lo) / 2.0),
                None => format!("{:.0}", a.rating),
            },
            None => "—".into(),
        },
        BoardColumn::Metric(i) => r.cells[*i].as_ref().map_or("—".into(), |x| x.text(&board.columns[*i])),
    }
}

/// The part of the board in view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Rows of the leaderboard in view.
    pub rows: std::ops::Range<usize>,
    /// Shown columns in view (indexes into `State::columns`), the model's first.
    pub columns: Vec<usize>,
    /// Width of every shown column.
    pub widths: Vec<usize>,
}

/// The leaderboard view.
pub struct State {
    data: Vec<RunData>,
    pairs: Vec<JudgedPair>,
    arenas: HashMap<Vec<String>, Option<Arena>>,
    /// The suites of the loaded runs, in order.
    pub suites: Vec<String>,
    /// Only this suite (index into `suites`).
    pub suite: Option<usize>,
    /// Only this run (index into the loaded runs).
    pub run: Option<usize>,
    pub board: Leaderboard,
    /// Per-category columns shown.
    pub categories: bool,
    pub columns: Vec<BoardColumn>,
    pub sort: SortBy,
    pub descending: bool,
    /// Cursor: 0 is the header, `i + 1` the leaderboard's row `i`.
    pub row: usize,
    /// Cursor: index into `columns`.
    pub col: usize,
    /// First leaderboard row in view.
    pub row_offset: usize,
    /// First shown column in view after the model's (≥ 1).
    pub col_offset: usize,
    pub drill: Option<Drill>,
    pub help: bool,
    pub quit: bool,
    /// Terminal columns and lines.
    pub size: (u16, u16),
    /// A note for the status line, until the next key.
    pub message: Option<String>,
}

impl State {
    /// The board over `data` (runs in order); `pairs` are the store's judged pairs, rated for the
    /// runs in view. Rows start by overall, highest first.
    pub fn new(data: Vec<RunData>, pairs: Vec<JudgedPair>, size: (u16, u16)) -> State {
        let mut suites: Vec<String> = Vec::new();
        for d in &data {
            if !suites.contains(&d.run.suite) {
                suites.push(d.run.suite.clone());
            }
        }
        let mut s = State {
            data,
            pairs,
            arenas: HashMap::new(),
            suites,
            suite: None,
            run: None,
            board: Leaderboard { columns: vec![], rows: vec![], overall_columns: vec![] },
            categories: false,
            columns: vec![],
            sort: SortBy::Overall,
            descending: true,
            row: 1,
            col: 0,
            row_offset: 0,
            col_offset: 1,
            drill: None,
            help: false,
            quit: false,
            size,
            message: None,
        };
        s.rebuild();
        s
    }

    /// The loaded runs in view under the filters.
    pub fn runs_in_view(&self) -> Vec<&RunData> {
        self.data
            .iter()
            .enumerate()
            .filter(|(i, d)| self.suite.is_none_or(|s| self.suites[s] == d.run.suite) && self.run.is_none_or(|r| r == *i))
            .map(|(_, d)| d)
            .collect()
    }

    /// A loaded run by id.
    pub fn run_data(&self, id: &str) -> Option<&RunData> {
        self.data.iter().find(|d| d.run.id == id)
    }

    /// Rebuilds the board for the filters, keeps the sort, and puts the cursor back on the same
    /// model and column where they are still shown.
    fn rebuild(&mut self) {
        let keep_row = self.cursor_row_key();
        let keep_col = self.columns.get(self.col).map(|c| self.column_key(c));
        let view: Vec<RunData> = self.runs_in_view().into_iter().cloned().collect();
        let ids: Vec<String> = view.iter().map(|d| d.run.id.clone()).collect();
        if !self.arenas.contains_key(&ids) {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let arena = match Arena::from_pairs(&self.pairs, &refs, ARENA_BOOTSTRAP, ARENA_SEED) {
                Ok(a) => a,
                Err(e) => {
                    self.message = Some(format!("no arena ratings: {e}"));
                    None
                }
            };
            self.arenas.insert(ids.clone(), arena);
        }
        self.board = Leaderboard::build(&view, self.arenas[&ids].as_ref());
        self.columns = columns(&self.board, self.categories);
        self.apply_sort();
        if let Some(k) = keep_col {
            self.col = self.columns.iter().position(|c| self.column_key(c) == k).unwrap_or(self.col);
        }
        self.restore_row(keep_row);
        self.follow();
    }

    fn column_key(&self, c: &BoardColumn) -> SortBy {
        match c {
            BoardColumn::Model => SortBy::Model,
            BoardColumn::Overall => SortBy::Overall,
            BoardColumn::Arena => SortBy::Arena,
            BoardColumn::Metric(i) => {
                let x = &self.board.columns[*i];
                SortBy::Metric(x.suite.clone(), x.task.clone(), x.metric.clone(), x.category.clone())
            }
        }
    }

    fn cursor_row_key(&self) -> Option<(String, Option<String>)> {
        let r = self.board.rows.get(self.row.checked_sub(1)?)?;
        Some((r.model.clone(), r.run_id.clone()))
    }

    fn restore_row(&mut self, key: Option<(String, Option<String>)>) {
        if let Some((model, run_id)) = key
            && let Some(i) = self.board.rows.iter().position(|r| r.model == model && r.run_id == run_id)
        {
            self.row = i + 1;
        }
    }

    fn apply_sort(&mut self) {
        let key = match &self.sort {
            SortBy::Model => Some(SortKey::Model),
            SortBy::Overall => Some(SortKey::Overall),
            SortBy::Arena => Some(SortKey::Arena),
            SortBy::Metric(s, t, m, c) => self.board.columns.iter().position(|x| (&x.suite, &x.task, &x.metric, &x.category) == (s, t, m, c)).map(SortKey::Column),
        };
        match key {
            Some(k) => self.board.sort(k, self.descending),
            // The sorted column is filtered out: back to the default order.
            None => {
                self.sort = SortBy::Overall;
                self.descending = true;
                self.board.sort(SortKey::Overall, true);
            }
        }
    }

    /// Sorts by the cursor's column; again on the same column reverses. A first sort puts the
    /// best first (highest, or lowest for a lower-is-better metric), a model sort A to Z.
    pub fn sort_by_cursor(&mut self) {
        let Some(c) = self.columns.get(self.col).copied() else { return };
        let key = self.column_key(&c);
        if key == self.sort {
            self.descending = !self.descending;
        } else {
            self.descending = match c {
                BoardColumn::Model => false,
                BoardColumn::Overall | BoardColumn::Arena => true,
                BoardColumn::Metric(i) => self.board.columns[i].higher_is_better,
            };
            self.sort = key;
        }
        let keep = self.cursor_row_key();
        self.apply_sort();
        self.restore_row(keep);
        self.follow();
    }

    /// Whether the rows are sorted by shown column `c`, and which way.
    pub fn sorted_on(&self, c: &BoardColumn) -> Option<bool> {
        (self.column_key(c) == self.sort).then_some(self.descending)
    }

    /// Next suite filter: all → each suite → all. A run filter of another suite is dropped.
    pub fn cycle_suite(&mut self) {
        if self.suites.is_empty() {
            return;
        }
        self.suite = match self.suite {
            None => Some(0),
            Some(i) if i + 1 < self.suites.len() => Some(i + 1),
            Some(_) => None,
        };
        if let (Some(s), Some(r)) = (self.suite, self.run)
            && self.data[r].run.suite != self.suites[s]
        {
            self.run = None;
        }
        self.rebuild();
    }

    /// Next run filter among the runs of the suite filter: all → each run → all.
    pub fn cycle_run(&mut self) {
        let candidates: Vec<usize> = (0..self.data.len()).filter(|&i| self.suite.is_none_or(|s| self.suites[s] == self.data[i].run.suite)).collect();
        self.run = match self.run.and_then(|r| candidates.iter().position(|&c| c == r)) {
            None => candidates.first().copied(),
            Some(k) => candidates.get(k + 1).copied(),
        };
        self.rebuild();
    }

    pub fn toggle_categories(&mut self) {
        self.categories = !self.categories;
        self.rebuild();
    }

    /// `all`, or the filtered suite's name.
    pub fn suite_label(&self) -> String {
        self.suite.map_or("all".into(), |s| self.suites[s].clone())
    }

    /// `all (N)`, or the filtered run's id.
    pub fn run_label(&self) -> String {
        match self.run {
            Some(r) => self.data[r].run.id.clone(),
            None => format!("all ({})", self.runs_in_view().len()),
        }
    }

    /// Lines of table rows in view.
    pub fn body_height(&self) -> usize {
        (self.size.1 as usize).saturating_sub(BOARD_CHROME)
    }

    /// Width of every shown column: its widest cell or header line, capped.
    pub fn widths(&self) -> Vec<usize> {
        self.columns
            .iter()
            .map(|c| {
                let (a, b) = header_lines(&self.board, c);
                // Room for the sort arrow after the header.
                let head = (width(&a) + 2).max(width(&b));
                let cells = (0..self.board.rows.len()).map(|r| width(&cell_text(&self.board, r, c))).max().unwrap_or(0);
                let cap = if *c == BoardColumn::Model { MAX_MODEL_WIDTH } else { MAX_COLUMN_WIDTH };
                head.max(cells).min(cap)
            })
            .collect()
    }

    /// The window of the board in view for the cursor and offsets.
    pub fn window(&self) -> Window {
        let widths = self.widths();
        let rows = self.row_offset.min(self.board.rows.len())..(self.row_offset + self.body_height()).min(self.board.rows.len());
        let total = self.size.0 as usize;
        let model = widths.first().copied().unwrap_or(0).min(total);
        let mut columns = vec![0];
        let mut used = model;
        for (i, w) in widths.iter().enumerate().skip(self.col_offset.max(1)) {
            if used + GAP + w > total && columns.len() > 1 {
                break;
            }
            columns.push(i);
            used += GAP + w;
        }
        Window { rows, columns, widths }
    }

    /// Moves the offsets so the cursor is in view.
    fn follow(&mut self) {
        let n = self.board.rows.len();
        self.row = self.row.min(n);
        self.col = self.col.min(self.columns.len().saturating_sub(1));
        let body = self.body_height().max(1);
        if self.row > 0 {
            let i = self.row - 1;
            if i < self.row_offset {
                self.row_offset = i;
            } else if i >= self.row_offset + body {
                self.row_offset = i + 1 - body;
            }
        }
        self.row_offset = self.row_offset.min(n.saturating_sub(body));
        let widths = self.widths();
        let avail = (self.size.0 as usize).saturating_sub(widths.first().copied().unwrap_or(0));
        self.col_offset = self.col_offset.clamp(1, self.columns.len().max(2) - 1);
        if self.col == 0 {
            self.col_offset = 1;
        } else {
            if self.col < self.col_offset {
                self.col_offset = self.col;
            }
            while self.col_offset < self.col && widths[self.col_offset..=self.col].iter().map(|w| w + GAP).sum::<usize>() > avail {
                self.col_offset += 1;
            }
        }
    }

    /// The terminal's size changed.
    pub fn resize(&mut self, w: u16, h: u16) {
        self.size = (w, h);
        if let Some(d) = &mut self.drill {
            d.layout(w as usize, (h as usize).saturating_sub(2));
        }
        self.follow();
    }

    /// The drill-down of the cell under the cursor: that model's samples of the column's task
    /// (and category), or of every task from the model, overall and arena columns.
    pub fn query_at_cursor(&self) -> Option<SampleQuery> {
        let row = self.board.rows.get(self.row.checked_sub(1)?)?;
        let view = self.runs_in_view();
        let in_runs = |suite: Option<&str>| -> Vec<String> {
            match &row.run_id {
                Some(id) => vec![id.clone()],
                None => view.iter().filter(|d| suite.is_none_or(|s| d.run.suite == s)).map(|d| d.run.id.clone()).collect(),
            }
        };
        Some(match self.columns.get(self.col)? {
            BoardColumn::Metric(i) => {
                let c = &self.board.columns[*i];
                SampleQuery {
                    runs: in_runs(Some(&c.suite)),
                    model: row.model.clone(),
                    task: Some(c.task.clone()),
                    category: (!c.category.is_empty()).then(|| c.category.clone()),
                    title: format!("{} × {}", row.label, c.label),
                }
            }
            _ => SampleQuery { runs: in_runs(None), model: row.model.clone(), task: None, category: None, title: format!("{} × every task", row.label) },
        })
    }

    /// Opens the drill-down with the samples a request fetched.
    pub fn open(&mut self, q: SampleQuery, samples: Vec<SampleView>) {
        let samples: Vec<SampleView> = samples.into_iter().filter(|s| q.matches(s)).collect();
        if samples.is_empty() {
            self.message = Some(format!("no samples of {} in the runs in view", q.title));
            return;
        }
        self.drill = Some(Drill::new(q.title, samples, self.size.0 as usize, (self.size.1 as usize).saturating_sub(2)));
    }

    /// Handles a key press; returns what the event loop must fetch.
    pub fn key(&mut self, k: KeyEvent) -> Option<Request> {
        self.message = None;
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && k.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        if self.help {
            // Any key closes the keys; q still quits from the board.
            self.help = false;
            if k.code == KeyCode::Char('q') && self.drill.is_none() {
                self.quit = true;
            }
            return None;
        }
        if let Some(d) = &mut self.drill {
            match d.key(k) {
                DrillAction::Stay => {}
                DrillAction::Back => self.drill = None,
                DrillAction::Quit => self.quit = true,
                DrillAction::Help => self.help = true,
            }
            return None;
        }
        let page = self.body_height().max(1);
        let last_row = self.board.rows.len();
        match k.code {
            KeyCode::Left | KeyCode::Char('h') => self.col = self.col.saturating_sub(1),
            KeyCode::Right | KeyCode::Char('l') => self.col += 1,
            KeyCode::Up | KeyCode::Char('k') => self.row = self.row.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.row += 1,
            KeyCode::PageUp if self.row > 0 => self.row = self.row.saturating_sub(page).max(1),
            KeyCode::PageDown => self.row += page,
            KeyCode::Home | KeyCode::Char('g') => self.row = 1.min(last_row),
            KeyCode::End | KeyCode::Char('G') => self.row = last_row,
            KeyCode::Char('0') | KeyCode::Char('^') => self.col = 0,
            KeyCode::Char('$') => self.col = self.columns.len().saturating_sub(1),
            KeyCode::Char('s') => self.sort_by_cursor(),
            KeyCode::Enter if self.row == 0 => self.sort_by_cursor(),
            KeyCode::Enter => match self.query_at_cursor() {
                Some(q) => return Some(Request::Samples(q)),
                None => self.message = Some("no row here".into()),
            },
            KeyCode::Char('f') => self.cycle_suite(),
            KeyCode::Char('r') => self.cycle_run(),
            KeyCode::Char('c') => self.toggle_categories(),
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            _ => {}
        }
        self.follow();
        None
    }
}
