//! The drill-down: one model × task's samples as a document of labelled fields, wrapped to the
//! terminal's width, scrolled by screen line, searched like `less`.

use super::visible;
use crate::results::{Outcome, SampleView};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use unicode_width::UnicodeWidthChar;

/// Width of the field labels (`response  `).
pub const LABEL: usize = 10;

/// A line of the document before wrapping: a sample's header, or one line of one field.
#[derive(Debug, Clone)]
struct Logical {
    /// The field's name on its first line, empty on the lines after.
    label: &'static str,
    text: Vec<char>,
    header: bool,
    /// Index of the sample it belongs to.
    sample: usize,
}

/// One screen line: characters `start..end` of logical line `line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: usize,
    pub start: usize,
    pub end: usize,
    /// The first screen line of its logical line (where the label goes).
    pub first: bool,
}

/// A search match: `len` characters from `start` of logical line `line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub line: usize,
    pub start: usize,
    pub len: usize,
}

/// How a stretch of a painted line is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Plain,
    Hit,
    /// The match `n`/`N` moved to.
    Current,
}

/// A screen line ready to paint.
#[derive(Debug, Clone, PartialEq)]
pub struct Painted {
    /// The label column: the field's name or blanks, `LABEL` wide (empty on a sample header).
    pub label: String,
    pub header: bool,
    pub segments: Vec<(String, Mark)>,
}

/// What a key did in the drill-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillAction {
    Stay,
    Back,
    Quit,
    Help,
}

/// The samples of one board cell, laid out for a `width` × `height` text area.
#[derive(Debug, Clone)]
pub struct Drill {
    pub title: String,
    pub samples: Vec<SampleView>,
    lines: Vec<Logical>,
    /// Index of each logical line's first screen line.
    first_row: Vec<usize>,
    pub rows: Vec<Row>,
    pub width: usize,
    pub height: usize,
    /// The screen line at the top.
    pub scroll: usize,
    /// The search being typed after `/`.
    pub input: Option<String>,
    /// The search in force (empty: none).
    pub query: String,
    pub hits: Vec<Hit>,
    pub current: Option<usize>,
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Correct => "correct",
        Outcome::Incorrect => "incorrect",
        Outcome::Error => "error",
        Outcome::Ungraded => "ungraded",
    }
}

/// Lines of a text as characters safe to show (tabs as four spaces, controls visible).
fn text_lines(s: &str) -> Vec<Vec<char>> {
    s.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).replace('\t', "    ").chars().map(visible).collect()).collect()
}

/// The search's case folding, one character for one so positions carry over.
fn fold(c: char) -> char {
    let mut l = c.to_lowercase();
    match (l.next(), l.next()) {
        (Some(x), None) => x,
        _ => c,
    }
}

impl Drill {
    pub fn new(title: String, samples: Vec<SampleView>, width: usize, height: usize) -> Drill {
        let mut lines = Vec::new();
        let n = samples.len();
        for (i, s) in samples.iter().enumerate() {
            let mut head = format!("── {}/{n} · {} · {}", i + 1, s.model, s.task);
            if !s.item_id.is_empty() {
                head.push_str(&format!(" #{}", s.item_id));
            }
            if let Some(c) = s.category.as_ref().filter(|c| !c.is_empty()) {
                head.push_str(&format!(" · {c}"));
            }
            head.push_str(&format!(" · {} · run {} ──", outcome_word(s.outcome), s.run_id));
            lines.push(Logical { label: "", text: head.replace('\n', " ").chars().map(visible).collect(), header: true, sample: i });
            let mut field = |label: &'static str, text: &str| {
                for (k, l) in text_lines(text).into_iter().enumerate() {
                    lines.push(Logical { label: if k == 0 { label } else { "" }, text: l, header: false, sample: i });
                }
            };
            field("prompt", &s.prompt);
            field("response", s.response.as_deref().unwrap_or("(no response)"));
            field("answer", s.answer.as_deref().unwrap_or("—"));
            field("target", s.target.as_deref().unwrap_or("—"));
            let scores: Vec<String> = s.scores.iter().map(|(m, v)| format!("{m} {v:.4}")).collect();
            field("scores", &if scores.is_empty() { "—".to_string() } else { scores.join(" · ") });
            if let Some(e) = &s.error {
                field("error", e);
            }
            for j in &s.judgments {
                let who = if j.opponent.is_empty() { j.judge.clone() } else { format!("{} vs {} (this answer as {})", j.judge, j.opponent, j.slot) };
                let verdict = match (&j.verdict, &j.error) {
                    (Some(v), _) => format!("verdict {v}"),
                    (None, Some(e)) => format!("failed: {e}"),
                    (None, None) => "no verdict".to_string(),
                };
                field("judge", &format!("{}: {who} → {verdict}", j.metric));
                if let Some(raw) = &j.raw {
                    field("  said", raw);
                }
            }
            lines.push(Logical { label: "", text: Vec::new(), header: false, sample: i });
        }
        let mut d = Drill { title, samples, lines, first_row: Vec::new(), rows: Vec::new(), width: 0, height: 0, scroll: 0, input: None, query: String::new(), hits: Vec::new(), current: None };
        d.layout(width, height);
        d
    }

    /// Wraps the document to `width` columns with `height` lines visible, keeping the line at the
    /// top in view.
    pub fn layout(&mut self, width: usize, height: usize) {
        if width == self.width && height == self.height && !self.rows.is_empty() {
            return;
        }
        let anchor = self.rows.get(self.scroll).map(|r| (r.line, r.start));
        self.width = width;
        self.height = height;
        self.rows.clear();
        self.first_row.clear();
        for (i, l) in self.lines.iter().enumerate() {
            self.first_row.push(self.rows.len());
            let avail = if l.header { width } else { width.saturating_sub(LABEL) }.max(1);
            let mut start = 0;
            loop {
                let end = wrap_end(&l.text, start, avail);
                self.rows.push(Row { line: i, start, end, first: start == 0 });
                if end >= l.text.len() {
                    break;
                }
                start = end;
            }
        }
        self.scroll = match anchor {
            Some((line, start)) => self.row_at(line, start),
            None => 0,
        };
        self.clamp();
    }

    /// The screen line holding character `pos` of logical line `line`.
    fn row_at(&self, line: usize, pos: usize) -> usize {
        let first = self.first_row.get(line).copied().unwrap_or(0);
        let mut r = first;
        while r + 1 < self.rows.len() && self.rows[r + 1].line == line && self.rows[r + 1].start <= pos {
            r += 1;
        }
        r
    }

    /// The screen line a match starts on.
    pub fn hit_row(&self, h: &Hit) -> usize {
        self.row_at(h.line, h.start)
    }

    pub fn max_scroll(&self) -> usize {
        self.rows.len().saturating_sub(self.height.max(1))
    }

    fn clamp(&mut self) {
        self.scroll = self.scroll.min(self.max_scroll());
    }

    pub fn scroll_by(&mut self, d: isize) {
        self.scroll = self.scroll.saturating_add_signed(d);
        self.clamp();
    }

    /// The sample whose lines are at the top (0-based).
    pub fn top_sample(&self) -> usize {
        self.rows.get(self.scroll).map_or(0, |r| self.lines[r.line].sample)
    }

    /// Searches for `query` (case-insensitive) and moves to the first match at or below the top
    /// line, else the first; an empty query clears the search.
    pub fn search(&mut self, query: &str) {
        self.query = query.to_string();
        self.hits.clear();
        self.current = None;
        let needle: Vec<char> = query.chars().map(fold).collect();
        if needle.is_empty() {
            return;
        }
        for (i, l) in self.lines.iter().enumerate() {
            let hay: Vec<char> = l.text.iter().map(|&c| fold(c)).collect();
            let mut s = 0;
            while s + needle.len() <= hay.len() {
                if hay[s..s + needle.len()] == needle[..] {
                    self.hits.push(Hit { line: i, start: s, len: needle.len() });
                    s += needle.len();
                } else {
                    s += 1;
                }
            }
        }
        if self.hits.is_empty() {
            return;
        }
        let from = self.scroll;
        let k = self.hits.iter().position(|h| self.hit_row(h) >= from).unwrap_or(0);
        self.go_to(k);
    }

    fn go_to(&mut self, k: usize) {
        self.current = Some(k);
        self.scroll = self.hit_row(&self.hits[k]);
        self.clamp();
    }

    /// `n` (forward) or `N`: the next or previous match, wrapping around.
    pub fn step(&mut self, forward: bool) {
        let n = self.hits.len();
        if n == 0 {
            return;
        }
        let k = match self.current {
            Some(k) if forward => (k + 1) % n,
            Some(k) => (k + n - 1) % n,
            None => 0,
        };
        self.go_to(k);
    }

    pub fn clear_search(&mut self) {
        self.query.clear();
        self.hits.clear();
        self.current = None;
    }

    /// The screen lines in view, ready to paint.
    pub fn painted(&self) -> Vec<Painted> {
        let end = (self.scroll + self.height).min(self.rows.len());
        (self.scroll..end).map(|r| self.paint(&self.rows[r])).collect()
    }

    fn paint(&self, r: &Row) -> Painted {
        let l = &self.lines[r.line];
        let label = if l.header {
            String::new()
        } else {
            let name = if r.first { l.label } else { "" };
            format!("{name:<LABEL$}")
        };
        // The line's matches (hits are in line order).
        let from = self.hits.partition_point(|h| h.line < r.line);
        let to = from + self.hits[from..].partition_point(|h| h.line == r.line);
        let mark_of = |pos: usize| -> Mark {
            match (from..to).find(|&k| self.hits[k].start <= pos && pos < self.hits[k].start + self.hits[k].len) {
                Some(k) if self.current == Some(k) => Mark::Current,
                Some(_) => Mark::Hit,
                None => Mark::Plain,
            }
        };
        let mut segments: Vec<(String, Mark)> = Vec::new();
        for pos in r.start..r.end {
            let m = mark_of(pos);
            match segments.last_mut() {
                Some((s, last)) if *last == m => s.push(l.text[pos]),
                _ => segments.push((l.text[pos].to_string(), m)),
            }
        }
        Painted { label, header: l.header, segments }
    }

    /// Handles a key; says whether to stay, go back to the board, quit or show the keys.
    pub fn key(&mut self, k: KeyEvent) -> DrillAction {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && k.code == KeyCode::Char('c') {
            return DrillAction::Quit;
        }
        if let Some(input) = &mut self.input {
            match k.code {
                KeyCode::Enter => {
                    let q = std::mem::take(input);
                    self.input = None;
                    self.search(&q);
                }
                KeyCode::Esc => self.input = None,
                KeyCode::Backspace => {
                    input.pop();
                }
                KeyCode::Char(c) if !ctrl => input.push(c),
                _ => {}
            }
            return DrillAction::Stay;
        }
        let page = self.height.max(1) as isize;
        match k.code {
            KeyCode::Char('f') | KeyCode::Char('d') if ctrl => self.scroll_by(if k.code == KeyCode::Char('f') { page } else { page / 2 }),
            KeyCode::Char('b') | KeyCode::Char('u') if ctrl => self.scroll_by(if k.code == KeyCode::Char('b') { -page } else { -page / 2 }),
            KeyCode::Char('j') | KeyCode::Down => self.scroll_by(1),
            KeyCode::Char('k') | KeyCode::Up => self.scroll_by(-1),
            KeyCode::PageDown | KeyCode::Char(' ') => self.scroll_by(page),
            KeyCode::PageUp => self.scroll_by(-page),
            KeyCode::Char('g') | KeyCode::Home => self.scroll = 0,
            KeyCode::Char('G') | KeyCode::End => self.scroll = self.max_scroll(),
            KeyCode::Char('/') => self.input = Some(String::new()),
            KeyCode::Char('n') => self.step(true),
            KeyCode::Char('N') => self.step(false),
            KeyCode::Char('?') => return DrillAction::Help,
            KeyCode::Esc if !self.query.is_empty() => self.clear_search(),
            KeyCode::Esc | KeyCode::Char('q') => return DrillAction::Back,
            _ => {}
        }
        DrillAction::Stay
    }

    /// The search line: what is being typed, or where the search stands.
    pub fn search_status(&self) -> Option<String> {
        if let Some(i) = &self.input {
            return Some(format!("/{i}"));
        }
        if self.query.is_empty() {
            return None;
        }
        Some(match self.current {
            Some(k) => format!("match {} of {} for \"{}\" · n/N next/previous · Esc clears", k + 1, self.hits.len(), super::one_line(&self.query)),
            None => format!("no match for \"{}\" · Esc clears", super::one_line(&self.query)),
        })
    }
}

/// Where the screen line that starts at `start` ends: at most `avail` columns, after the last
/// space when a word would be cut, and at least one character.
fn wrap_end(text: &[char], start: usize, avail: usize) -> usize {
    let mut w = 0;
    let mut last_space = None;
    let mut i = start;
    while i < text.len() {
        let cw = text[i].width().unwrap_or(0);
        if w + cw > avail && i > start {
            return match last_space {
                Some(s) if s > start => s + 1,
                _ => i,
            };
        }
        if text[i] == ' ' {
            last_space = Some(i);
        }
        w += cw;
        i += 1;
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize, response: &str) -> SampleView {
        SampleView {
            run_id: "r1".into(),
            model: "m".into(),
            task: "t".into(),
            item_id: format!("q{i}"),
            category: None,
            prompt: format!("question {i}"),
            response: Some(response.into()),
            answer: Some("4".into()),
            target: Some("4".into()),
            scores: vec![("exact-match".into(), 1.0)],
            outcome: Outcome::Correct,
            error: None,
            judgments: vec![],
        }
    }

    #[test]
    fn wraps_at_spaces_and_keeps_the_top_line_on_relayout() {
        assert_eq!(wrap_end(&"aaa bbb ccc".chars().collect::<Vec<_>>(), 0, 6), 4);
        assert_eq!(wrap_end(&"abcdefgh".chars().collect::<Vec<_>>(), 0, 3), 3);
        // Wide characters count two columns; one that does not fit still moves on.
        assert_eq!(wrap_end(&"中文字".chars().collect::<Vec<_>>(), 0, 4), 2);
        assert_eq!(wrap_end(&"中".chars().collect::<Vec<_>>(), 0, 1), 1);
        let long = "word ".repeat(40);
        let mut d = Drill::new("t".into(), (0..5).map(|i| sample(i, &long)).collect(), 40, 10);
        // 30 columns for text: 200 characters of five-letter words → 7 lines of response.
        let response_rows = d.rows.iter().filter(|r| d.lines[r.line].label == "response").count();
        assert_eq!(response_rows, 5 * 7);
        d.scroll = d.first_row[d.lines.iter().position(|l| l.sample == 3 && l.header).unwrap()];
        assert_eq!(d.top_sample(), 3);
        d.layout(120, 10);
        assert_eq!(d.top_sample(), 3, "the same sample stays on top after a resize");
        assert!(d.rows[d.scroll].first && d.lines[d.rows[d.scroll].line].header);
    }

    #[test]
    fn search_finds_every_match_and_wraps_around() {
        let mut d = Drill::new("t".into(), (0..6).map(|i| sample(i, if i % 2 == 0 { "the NEEDLE here" } else { "hay" })).collect(), 60, 5);
        d.scroll = d.first_row[d.lines.iter().position(|l| l.sample == 3 && l.header).unwrap()];
        d.search("needle");
        assert_eq!(d.hits.len(), 3);
        // The first match at or below the top line: sample 4's.
        assert_eq!(d.current, Some(2));
        assert_eq!(d.top_sample(), 4);
        d.step(true);
        assert_eq!((d.current, d.top_sample()), (Some(0), 0), "wraps to the first");
        d.step(false);
        assert_eq!(d.current, Some(2));
        d.search("absent");
        assert_eq!((d.hits.len(), d.current), (0, None));
        assert!(d.search_status().unwrap().contains("no match for \"absent\""));
    }
}
