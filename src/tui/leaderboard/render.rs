//! Paints the state: the board (title, table, detail of the cell under the cursor, keys), the
//! drill-down, and the keys overlay. A pure function of the state; any size works, down to 0 × 0.

use super::drill::{Drill, Mark};
use super::state::{cell_text, header_label, header_lines, BoardColumn, State, GAP};
use super::{clip, one_line};
use crate::results::format_value;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table};
use ratatui::Frame;

/// Style of a search match, and of the match `n`/`N` moved to.
pub const HIT: Style = Style::new().fg(Color::Black).bg(Color::Yellow);
pub const CURRENT_HIT: Style = Style::new().fg(Color::Black).bg(Color::LightRed).add_modifier(Modifier::BOLD);
/// Style of the cell under the cursor.
pub const CURSOR: Style = Style::new().add_modifier(Modifier::REVERSED);

const BOARD_KEYS: &str = "←↓↑→/hjkl move · s sort · Enter samples · f suite · r run · c categories · ? keys · q quit";
const DRILL_KEYS: &str = "j/k scroll · PgUp/PgDn page · g/G top/bottom · / search · n/N next/prev · q back · ? keys";

/// The keys, as the `?` overlay lists them.
pub const HELP: &[&str] = &[
    "Board",
    "  ← ↓ ↑ → / h j k l   move between cells (up from the first row: the header)",
    "  s, Enter on header  sort by the column; again reverses",
    "  Enter               samples of the model × task under the cursor",
    "                      (on model, overall or arena: every task of the model)",
    "  f                   suite filter: all → each suite → all",
    "  r                   run filter: all → each run of the suite → all",
    "  c                   show or hide per-category columns",
    "  g G PgUp PgDn 0 $   first, last row; a page; first, last column",
    "  q Esc               quit",
    "Samples",
    "  j k ↓ ↑             scroll a line; PgUp PgDn space: a page",
    "  g G                 top, bottom",
    "  / text Enter        search (case-insensitive); n N next, previous match",
    "  Esc                 clear the search; again: back to the board",
    "  q                   back to the board",
    "Any key closes this help.",
];

/// Draws the state into the frame.
pub fn render(f: &mut Frame, s: &State) {
    let area = f.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    match &s.drill {
        Some(d) => render_drill(f, area, d, s.message.as_deref()),
        None => render_board(f, area, s),
    }
    if s.help {
        render_help(f, area);
    }
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn render_board(f: &mut Frame, area: Rect, s: &State) {
    let [title, table, detail, keys] = Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let sort_name = s.columns.iter().find(|c| s.sorted_on(c).is_some()).map_or("overall".to_string(), |c| header_label(&s.board, c));
    let arrow = if s.descending { "▼" } else { "▲" };
    let heading = format!("llmeval leaderboard · suite: {} · run: {} · sort: {} {arrow}", s.suite_label(), s.run_label(), sort_name);
    f.render_widget(Paragraph::new(one_line(&heading)).style(bold()), title);
    f.render_widget(Paragraph::new(one_line(s.message.as_deref().unwrap_or(&detail_text(s)))), detail);
    f.render_widget(Paragraph::new(BOARD_KEYS).style(Style::new().add_modifier(Modifier::DIM)), keys);
    if s.board.rows.is_empty() {
        f.render_widget(Paragraph::new("no results in the runs in view (f, r change the filters)"), table);
        return;
    }
    let w = s.window();
    let header = Row::new(w.columns.iter().map(|&i| {
        let c = &s.columns[i];
        let (mut a, b) = header_lines(&s.board, c);
        if let Some(desc) = s.sorted_on(c) {
            a.push_str(if desc { " ▼" } else { " ▲" });
        }
        let width = w.widths[i];
        let align = if i == 0 { Alignment::Left } else { Alignment::Right };
        let text = Text::from(vec![Line::from(clip(&one_line(&a), width)), Line::from(clip(&one_line(&b), width))]).alignment(align);
        let style = if s.row == 0 && s.col == i { CURSOR.add_modifier(Modifier::BOLD) } else { bold() };
        Cell::from(text).style(style)
    }))
    .height(2);
    let rows = w.rows.clone().map(|r| {
        Row::new(w.columns.iter().map(|&i| {
            let c = &s.columns[i];
            let text = clip(&one_line(&cell_text(&s.board, r, c)), w.widths[i]);
            let line = if *c == BoardColumn::Model { Line::from(text) } else { Line::from(text).alignment(Alignment::Right) };
            let mut style = Style::new();
            if s.row == r + 1 {
                style = if s.col == i { CURSOR } else if i == 0 { bold() } else { style };
            }
            Cell::from(line).style(style)
        }))
    });
    let widths: Vec<Constraint> = w.columns.iter().map(|&i| Constraint::Length(w.widths[i] as u16)).collect();
    f.render_widget(Table::new(rows, widths).header(header).column_spacing(GAP as u16), table);
}

/// What the status line says of the cell under the cursor.
fn detail_text(s: &State) -> String {
    let Some(c) = s.columns.get(s.col) else { return String::new() };
    if s.row == 0 {
        let again = match s.sorted_on(c) {
            Some(true) => " (sorted ▼; again: ▲)",
            Some(false) => " (sorted ▲; again: ▼)",
            None => "",
        };
        return format!("Enter or s: sort by {}{again}", header_label(&s.board, c));
    }
    let Some(row) = s.board.rows.get(s.row - 1) else { return String::new() };
    match c {
        BoardColumn::Model => format!("{}: Enter shows its samples of every task", row.label),
        BoardColumn::Overall => {
            let counted: Vec<&str> = s.board.overall_columns.iter().map(|&i| s.board.columns[i].label.as_str()).collect();
            match row.overall {
                Some(v) => format!("{} · overall {v:.3}: mean of {} scaled primary metric(s): {}", row.label, counted.len(), counted.join(", ")),
                None if counted.is_empty() => format!("{} · no overall: no task here has a primary metric with a fixed range", row.label),
                None => format!("{} · no overall: not evaluated on every counted task ({})", row.label, counted.join(", ")),
            }
        }
        BoardColumn::Arena => match &row.arena {
            Some(a) => {
                let ci = a.ci_low.zip(a.ci_high).map_or(String::new(), |(lo, hi)| format!(", 95% CI [{lo:.1}, {hi:.1}]"));
                format!("{} · arena (Bradley-Terry) {:.1}{ci}, rank {}, {} battles", row.label, a.rating, a.rank, a.battles)
            }
            None => format!("{} · no battles in the runs in view", row.label),
        },
        BoardColumn::Metric(i) => {
            let col = &s.board.columns[*i];
            match &row.cells[*i] {
                Some(x) => {
                    let value = x.value.map_or("no value".to_string(), |v| format_value(v, col.range));
                    let ci = x.ci_low.zip(x.ci_high).map_or(String::new(), |(lo, hi)| format!(", 95% CI [{}, {}]", format_value(lo, col.range), format_value(hi, col.range)));
                    format!("{} · {}: {value}{ci}, n = {}, errors {}, run {}", row.label, col.label, x.n, x.errors, x.run_id)
                }
                None => format!("{} · {}: no result", row.label, col.label),
            }
        }
    }
}

fn render_drill(f: &mut Frame, area: Rect, d: &Drill, message: Option<&str>) {
    let [title, body, status] = Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]).areas(area);
    let last = (d.scroll + d.height).min(d.rows.len());
    let heading = format!("{} · {} sample(s) · at {} of {} · lines {}–{} of {}", d.title, d.samples.len(), d.top_sample() + 1, d.samples.len(), d.scroll + 1, last, d.rows.len());
    f.render_widget(Paragraph::new(one_line(&heading)).style(bold()), title);
    let label_style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
    let lines: Vec<Line> = d
        .painted()
        .into_iter()
        .map(|p| {
            let mut spans = Vec::new();
            if !p.label.is_empty() {
                spans.push(Span::styled(p.label, label_style));
            }
            for (text, mark) in p.segments {
                let style = match mark {
                    Mark::Plain if p.header => bold(),
                    Mark::Plain => Style::new(),
                    Mark::Hit => HIT,
                    Mark::Current => CURRENT_HIT,
                };
                spans.push(Span::styled(text, style));
            }
            Line::from(spans)
        })
        .collect();
    f.render_widget(Paragraph::new(lines), body);
    let line = match (message, d.search_status()) {
        (Some(m), _) => Line::from(one_line(m)),
        (None, Some(st)) => Line::from(st),
        (None, None) => Line::from(DRILL_KEYS).style(Style::new().add_modifier(Modifier::DIM)),
    };
    f.render_widget(Paragraph::new(line), status);
}

fn render_help(f: &mut Frame, area: Rect) {
    let w = (HELP.iter().map(|l| super::width(l)).max().unwrap_or(0) as u16 + 4).min(area.width);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    f.render_widget(Clear, popup);
    let lines: Vec<Line> = HELP.iter().map(|l| if l.starts_with(' ') { Line::from(*l) } else { Line::from(*l).style(bold()) }).collect();
    f.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")), popup);
}
