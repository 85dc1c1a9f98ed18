//! The view rendered into ratatui's test buffer: what a person would see after each key.

use super::render::{CURRENT_HIT, CURSOR, HIT};
use super::*;
use crate::results::{JudgmentView, Outcome, RunData, SampleView};
use crate::store::{Aggregate, JudgedPair, Run};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use std::collections::HashMap;

fn run(id: &str, suite: &str) -> Run {
    Run::fixture(id, suite)
}

fn agg(model: &str, task: &str, category: &str, metric: &str, value: f64, half: f64) -> Aggregate {
    Aggregate { model: model.into(), task: task.into(), category: category.into(), metric: metric.into(), value: Some(value), stderr: None, ci95: Some((value - half, value + half)), n: 10, errors: 0 }
}

fn data(id: &str, suite: &str, aggregates: Vec<Aggregate>) -> RunData {
    RunData { run: run(id, suite), aggregates, pairwise: Default::default(), primary: HashMap::new(), evaluated: vec![] }
}

/// Suite `s` (run r1): beta leads overall, alpha leads arith, beta copy; suite `t` (run r2): alpha
/// alone on qa.
fn two_suites() -> Vec<RunData> {
    let s = data(
        "r1",
        "s",
        vec![
            agg("alpha", "arith", "", "exact-match", 0.9, 0.1),
            agg("alpha", "arith", "easy", "exact-match", 1.0, 0.0),
            agg("alpha", "copy", "", "bleu", 10.0, 2.5),
            agg("beta", "arith", "", "exact-match", 0.5, 0.1),
            agg("beta", "arith", "easy", "exact-match", 0.6, 0.2),
            agg("beta", "copy", "", "bleu", 80.0, 4.0),
            agg("gamma", "arith", "", "exact-match", 0.7, 0.1),
            agg("gamma", "arith", "easy", "exact-match", 0.8, 0.1),
            agg("gamma", "copy", "", "bleu", 40.0, 3.0),
        ],
    );
    let t = data("r2", "t", vec![agg("alpha", "qa", "", "f1", 0.3, 0.05)]);
    vec![s, t]
}

fn state(d: Vec<RunData>) -> State {
    State::new(d, vec![], (100, 20))
}

fn draw(s: &State) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(s.size.0, s.size.1)).unwrap();
    t.draw(|f| render(f, s)).unwrap();
    t.backend().buffer().clone()
}

fn lines(buf: &Buffer) -> Vec<String> {
    (0..buf.area.height).map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>()).collect()
}

fn screen(s: &State) -> String {
    lines(&draw(s)).join("\n")
}

fn press(s: &mut State, code: KeyCode) -> Option<Request> {
    s.key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn type_keys(s: &mut State, keys: &str) {
    for c in keys.chars() {
        assert_eq!(press(s, KeyCode::Char(c)), None, "key {c:?}");
    }
}

/// The screen line each of `names` is first drawn on, from the table's rows.
fn row_order(s: &State, names: &[&str]) -> Vec<String> {
    let ls = lines(&draw(s));
    let mut found: Vec<(usize, String)> = names.iter().map(|n| (ls.iter().skip(3).position(|l| l.starts_with(n)).unwrap_or_else(|| panic!("{n} not on screen:\n{}", ls.join("\n"))), n.to_string())).collect();
    found.sort();
    found.into_iter().map(|(_, n)| n).collect()
}

#[test]
fn the_board_shows_headers_values_and_rows_by_overall() {
    let s = state(two_suites());
    let text = screen(&s);
    for want in ["llmeval leaderboard · suite: all · run: all (2) · sort: overall ▼", "model", "overall ▼", "arith", "exact-match", "copy", "bleu", "qa", "f1", "0.900 ± 0.100", "80.00 ± 4.00", "0.300 ± 0.050"] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    assert!(!text.contains("arena"), "no battles, no arena column");
    assert!(!text.contains("exact-match / easy"), "category columns are hidden by default");
    // With qa counted, only alpha has every counted task, so only alpha has an overall; the others
    // follow by name.
    assert!(text.contains("0.433"), "alpha: (0.9 + 0.1 + 0.3) / 3\n{text}");
    assert_eq!(row_order(&s, &["alpha", "beta", "gamma"]), ["alpha", "beta", "gamma"]);
    // One suite at a time: f picks suite s.
    let mut s = s;
    type_keys(&mut s, "f");
    assert_eq!(s.suite_label(), "s");
    let text = screen(&s);
    assert!(text.contains("0.650") && text.contains("0.550") && text.contains("0.500") && !text.contains("qa"), "{text}");
    assert_eq!(row_order(&s, &["alpha", "beta", "gamma"]), ["beta", "gamma", "alpha"]);
    // The cursor stayed on alpha, now last; the detail line explains the cell under it.
    assert_eq!(s.board.rows[s.row - 1].model, "alpha");
    assert!(text.contains("alpha: Enter shows its samples of every task"), "{text}");
}

#[test]
fn s_sorts_by_the_cursor_column_and_again_reverses() {
    let mut s = state(two_suites());
    type_keys(&mut s, "f");
    // model → overall → arith · exact-match.
    type_keys(&mut s, "lls");
    let text = screen(&s);
    assert!(text.contains("arith ▼") && text.contains("sort: arith · exact-match ▼"), "{text}");
    assert_eq!(row_order(&s, &["alpha", "beta", "gamma"]), ["alpha", "gamma", "beta"]);
    // The cursor stays on its model (alpha), now the first row, on the arith cell.
    assert_eq!(s.board.rows[s.row - 1].model, "alpha");
    let buf = draw(&s);
    let y = lines(&buf).iter().position(|l| l.starts_with("alpha")).unwrap() as u16;
    let x = lines(&buf)[y as usize].find("0.900").map(|b| lines(&buf)[y as usize][..b].chars().count()).unwrap() as u16;
    assert_eq!(buf[(x, y)].style().add_modifier, CURSOR.add_modifier, "the cursor cell is reversed");
    type_keys(&mut s, "s");
    assert!(screen(&s).contains("arith ▲"));
    assert_eq!(row_order(&s, &["alpha", "beta", "gamma"]), ["beta", "gamma", "alpha"]);
    // Enter on the header sorts too: up to the header, right to copy · bleu.
    type_keys(&mut s, "kkkl");
    assert_eq!(s.row, 0);
    assert!(screen(&s).contains("Enter or s: sort by copy · bleu"));
    assert_eq!(press(&mut s, KeyCode::Enter), None);
    assert_eq!(row_order(&s, &["alpha", "beta", "gamma"]), ["beta", "gamma", "alpha"]);
    assert!(screen(&s).contains("bleu") && screen(&s).contains("copy ▼"));
    // The model column sorts by name, A to Z first.
    type_keys(&mut s, "hhhs");
    assert_eq!(row_order(&s, &["alpha", "beta", "gamma"]), ["alpha", "beta", "gamma"]);
    type_keys(&mut s, "s");
    assert_eq!(row_order(&s, &["alpha", "beta", "gamma"]), ["gamma", "beta", "alpha"]);
}

#[test]
fn a_lower_is_better_metric_sorts_lowest_first_and_a_sort_survives_filters() {
    let d = vec![data("r1", "s", vec![agg("a", "wiki", "", "word-perplexity", 30.0, 1.0), agg("b", "wiki", "", "word-perplexity", 20.0, 1.0)]), data("r2", "u", vec![agg("a", "x", "", "acc", 0.5, 0.1)])];
    let mut s = state(d);
    type_keys(&mut s, "lls");
    assert_eq!(s.sort, SortBy::Metric("s".into(), "wiki".into(), "word-perplexity".into(), "".into()));
    assert_eq!(row_order(&s, &["a", "b"]), ["b", "a"]);
    // Filtering to suite s keeps the sort; suite u has no such column: back to overall.
    type_keys(&mut s, "f");
    assert!(screen(&s).contains("wiki ▲"));
    type_keys(&mut s, "f");
    assert_eq!(s.sort, SortBy::Overall);
    assert!(screen(&s).contains("sort: overall ▼"));
}

#[test]
fn filters_cycle_suites_and_runs_and_categories_toggle() {
    let mut d = two_suites();
    d.push(data("r3", "s", vec![agg("alpha", "arith", "", "exact-match", 0.1, 0.1)]));
    let mut s = state(d);
    // Two runs of suite s: a row per model and run.
    assert!(screen(&s).contains("alpha @ r3") && screen(&s).contains("alpha @ r1"));
    type_keys(&mut s, "r");
    assert_eq!(s.run_label(), "r1");
    let text = screen(&s);
    assert!(text.contains("run: r1") && !text.contains("@ r") && !text.contains("qa"), "{text}");
    type_keys(&mut s, "r");
    assert_eq!(s.run_label(), "r2");
    assert!(screen(&s).contains("qa") && !screen(&s).contains("beta"));
    type_keys(&mut s, "rr");
    assert_eq!(s.run_label(), "all (3)");
    // Suite t, then the run filter only offers its run.
    type_keys(&mut s, "ff");
    assert_eq!(s.suite_label(), "t");
    type_keys(&mut s, "r");
    assert_eq!(s.run_label(), "r2");
    type_keys(&mut s, "r");
    assert_eq!(s.run_label(), "all (1)");
    type_keys(&mut s, "f");
    assert_eq!((s.suite_label().as_str(), s.runs_in_view().len()), ("all", 3));
    // Per-category columns.
    type_keys(&mut s, "c");
    assert!(screen(&s).contains("exact-match / easy"));
    type_keys(&mut s, "c");
    assert!(!screen(&s).contains("exact-match / easy"));
}

#[test]
fn the_arena_column_shows_ratings_when_runs_have_battles() {
    let p = |a: &str, b: &str, o1: &str, o2: &str, item: i64| JudgedPair { run_id: "r1".into(), model: a.into(), opponent: b.into(), order1: Some(o1.into()), order2: Some(o2.into()), task: "arith".into(), item, judge: "j".into() };
    // gamma beats alpha 4 of 5, beta ties.
    let mut pairs: Vec<JudgedPair> = (0..4).map(|i| p("gamma", "alpha", "A", "B", i)).collect();
    pairs.push(p("alpha", "gamma", "A", "B", 4));
    pairs.extend((5..8).map(|i| p("beta", "alpha", "tie", "tie", i)));
    pairs.extend((8..11).map(|i| p("beta", "gamma", "tie", "tie", i)));
    let mut d = two_suites();
    d.truncate(1);
    let mut s = State::new(d, pairs, (100, 20));
    assert_eq!(s.columns[2], BoardColumn::Arena);
    let text = screen(&s);
    assert!(text.contains("arena") && text.contains("rating"), "{text}");
    let gamma = s.board.rows.iter().find(|r| r.model == "gamma").unwrap().arena.clone().unwrap();
    let shown = format!("{:.0} ± {:.0}", gamma.rating, (gamma.ci_high.unwrap() - gamma.ci_low.unwrap()) / 2.0);
    assert!(text.contains(&shown), "{shown} in\n{text}");
    type_keys(&mut s, "lls");
    assert_eq!(row_order(&s, &["alpha", "beta", "gamma"]), ["gamma", "beta", "alpha"]);
    // The cursor stayed on beta (first by overall before): the detail line names its rank.
    let beta = s.board.rows.iter().find(|r| r.model == "beta").unwrap().arena.clone().unwrap();
    assert!(screen(&s).contains(&format!("beta · arena (Bradley-Terry) {:.1}", beta.rating)) && screen(&s).contains(&format!("rank {}", beta.rank)));
}

fn sample(run: &str, model: &str, task: &str, i: usize, response: &str) -> SampleView {
    SampleView {
        run_id: run.into(),
        model: model.into(),
        task: task.into(),
        item_id: format!("q{i}"),
        category: Some(if i.is_multiple_of(2) { "easy" } else { "hard" }.into()),
        prompt: format!("Q: {i}+{i}\nA:"),
        response: Some(response.into()),
        answer: Some(format!("{}", 2 * i)),
        target: Some(format!("{}", 2 * i)),
        scores: vec![("exact-match".into(), 1.0)],
        outcome: Outcome::Correct,
        error: None,
        judgments: vec![JudgmentView { metric: "judge-pairwise-vs-beta".into(), judge: "gpt-judge".into(), opponent: "beta".into(), slot: "B", verdict: Some("A".into()), raw: Some("Assistant A is better. [[A]]".into()), error: None }],
    }
}

/// Every sample of the fixture's runs (the drill-down keeps only the cell's).
fn all_samples() -> Vec<SampleView> {
    let mut v = Vec::new();
    for i in 0..8 {
        let resp = match i {
            2 => "the sum is 4 — needle, and a NeEdLe".to_string(),
            5 | 7 => format!("the sum is {} — needle", 2 * i),
            _ => format!("{}", 2 * i),
        };
        v.push(sample("r1", "alpha", "arith", i, &resp));
        v.push(sample("r1", "beta", "arith", i, "beta's needle never shows"));
        v.push(sample("r1", "alpha", "copy", i, "copy needle never shows in arith"));
    }
    v.push(sample("r2", "alpha", "qa", 0, "another suite"));
    v
}

/// Suite s only, cursor on alpha's arith cell, Enter: the drill-down.
fn drilled(size: (u16, u16)) -> State {
    let mut s = State::new(two_suites(), vec![], size);
    type_keys(&mut s, "fGll");
    assert_eq!(s.board.rows[s.row - 1].model, "alpha");
    let Some(Request::Samples(q)) = press(&mut s, KeyCode::Enter) else { panic!("Enter on a cell asks for its samples") };
    assert_eq!(q, SampleQuery { runs: vec!["r1".into()], model: "alpha".into(), task: Some("arith".into()), category: None, title: "alpha × arith · exact-match".into() });
    s.open(q, all_samples());
    s
}

#[test]
fn enter_opens_the_cells_samples_with_every_field() {
    let mut s = drilled((100, 30));
    let d = s.drill.as_ref().unwrap();
    assert_eq!(d.samples.len(), 8, "alpha's arith samples only");
    let text = screen(&s);
    for want in [
        "alpha × arith · exact-match · 8 sample(s) · at 1 of 8 · lines 1–28 of 80",
        "── 1/8 · alpha · arith #q0 · easy · correct · run r1 ──",
        "prompt    Q: 0+0",
        "          A:",
        "response  0",
        "answer    0",
        "target    0",
        "scores    exact-match 1.0000",
        "judge     judge-pairwise-vs-beta: gpt-judge vs beta (this answer as B) → verdict A",
        "  said    Assistant A is better. [[A]]",
        "── 2/8 · alpha · arith #q1 · hard",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    assert!(!text.contains("never shows"), "only the cell's model and task");
    // Scrolling: a line, a page, the bottom, the top.
    type_keys(&mut s, "j");
    assert!(lines(&draw(&s))[1].starts_with("prompt    Q: 0+0"));
    press(&mut s, KeyCode::PageDown);
    assert_eq!(s.drill.as_ref().unwrap().scroll, 1 + 28);
    type_keys(&mut s, "G");
    let text = screen(&s);
    assert!(text.contains("at 6 of 8 · lines 53–80 of 80"), "{text}");
    assert!(text.contains("── 8/8 · alpha · arith #q7"));
    type_keys(&mut s, "g");
    assert_eq!(s.drill.as_ref().unwrap().scroll, 0);
    // q goes back to the board, not out.
    type_keys(&mut s, "q");
    assert!(s.drill.is_none() && !s.quit);
    assert!(screen(&s).contains("llmeval leaderboard"));
}

/// Columns where `needle` (any case) starts on screen line `y`.
fn needles_at(ls: &[String], y: usize) -> Vec<u16> {
    let l = ls[y].to_lowercase();
    l.match_indices("needle").map(|(b, _)| l[..b].chars().count() as u16).collect()
}

#[test]
fn search_moves_to_each_match_and_highlights_it() {
    let mut s = drilled((80, 12));
    type_keys(&mut s, "/");
    assert!(screen(&s).lines().last().unwrap().starts_with("/"));
    type_keys(&mut s, "NEEDLE");
    assert!(screen(&s).lines().last().unwrap().starts_with("/NEEDLE"), "the search is typed on the last line");
    press(&mut s, KeyCode::Enter);
    assert_eq!(s.drill.as_ref().unwrap().hits.len(), 4, "two in sample 3's response, one in 6's, one in 8's; any case");
    // Match k of 4: on the line under the title (the first two, sample 3's, and the third, 6's),
    // its letters marked as the current match, the other match on the line as a match.
    let check = |s: &State, k: usize, sample: usize, on_line: usize| {
        let buf = draw(s);
        let ls = lines(&buf);
        assert!(ls[11].starts_with(&format!("match {k} of 4 for \"NEEDLE\"")), "{}", ls[11]);
        assert!(ls[0].contains(&format!("at {sample} of 8")), "{}", ls[0]);
        assert!(ls[1].starts_with("response  the sum is"), "{}", ls[1]);
        let xs = needles_at(&ls, 1);
        for (i, &x) in xs.iter().enumerate() {
            let want = if i == on_line { CURRENT_HIT.bg } else { HIT.bg };
            for dx in 0..6 {
                assert_eq!(buf[(x + dx, 1)].style().bg, want, "match {i} on the line, column {}", x + dx);
            }
            assert_ne!(buf[(x - 2, 1)].style().bg, want, "only the match is marked");
        }
    };
    check(&s, 1, 3, 0);
    type_keys(&mut s, "n");
    check(&s, 2, 3, 1);
    type_keys(&mut s, "n");
    check(&s, 3, 6, 0);
    type_keys(&mut s, "n");
    // The fourth is in the last sample: it cannot scroll to the top but is in view, current.
    let buf = draw(&s);
    let ls = lines(&buf);
    assert!(ls[11].starts_with("match 4 of 4"), "{}", ls[11]);
    assert_eq!(s.drill.as_ref().unwrap().scroll, s.drill.as_ref().unwrap().max_scroll());
    let y = ls.iter().position(|l| l.contains("the sum is 14")).expect("fourth match in view");
    assert_eq!(buf[(needles_at(&ls, y)[0], y as u16)].style().bg, CURRENT_HIT.bg);
    type_keys(&mut s, "n");
    check(&s, 1, 3, 0);
    type_keys(&mut s, "N");
    assert!(screen(&s).contains("match 4 of 4"));
    // Esc clears the search (no marks), Esc again goes back.
    press(&mut s, KeyCode::Esc);
    let buf = draw(&s);
    assert!(buf.content().iter().all(|c| c.style().bg != HIT.bg && c.style().bg != CURRENT_HIT.bg));
    assert!(s.drill.is_some());
    press(&mut s, KeyCode::Esc);
    assert!(s.drill.is_none() && !s.quit);
    // A search with no match says so.
    let mut s = drilled((80, 12));
    type_keys(&mut s, "/zzz");
    press(&mut s, KeyCode::Enter);
    assert!(screen(&s).contains("no match for \"zzz\""));
}

#[test]
fn question_mark_shows_the_keys() {
    let mut s = state(two_suites());
    type_keys(&mut s, "?");
    let text = screen(&s);
    assert!(text.contains(" keys ") && text.contains("sort by the column; again reverses") && text.contains("search (case-insensitive)"), "{text}");
    // Any key closes it without acting.
    type_keys(&mut s, "j");
    assert!(!s.help && s.row == 1);
    let mut s = drilled((100, 30));
    type_keys(&mut s, "?");
    assert!(screen(&s).contains("back to the board"));
    type_keys(&mut s, "q");
    assert!(s.drill.is_some() && !s.help, "q closes the keys first");
}

#[test]
fn tiny_and_odd_terminal_sizes_render_without_panicking() {
    for (w, h) in [(10, 3), (1, 1), (0, 0), (3, 10), (200, 2), (10, 1), (1, 40), (16, 6)] {
        let mut s = state(two_suites());
        s.resize(w, h);
        draw(&s);
        type_keys(&mut s, "ljGls?");
        draw(&s);
        type_keys(&mut s, "x");
        let mut s = drilled((100, 30));
        s.resize(w, h);
        draw(&s);
        type_keys(&mut s, "/needle");
        press(&mut s, KeyCode::Enter);
        type_keys(&mut s, "nGjk?");
        draw(&s);
        // And back to a normal size: the view lays itself out again.
        s.resize(100, 30);
        assert!(screen(&s).contains("alpha × arith"));
    }
}

#[test]
fn control_characters_from_models_and_data_are_shown_not_sent() {
    let d = vec![data("r1", "s", vec![agg("evil\u{1b}[2J", "arith", "", "exact-match", 0.5, 0.1)])];
    let mut s = state(d);
    let text = screen(&s);
    assert!(text.contains("evil␛[2J") && !text.contains('\u{1b}'), "{text}");
    assert!(plain(&s.board).contains("evil␛[2J") && !plain(&s.board).contains('\u{1b}'));
    type_keys(&mut s, "l");
    let Some(Request::Samples(q)) = press(&mut s, KeyCode::Enter) else { panic!() };
    let mut x = sample("r1", "evil\u{1b}[2J", "arith", 0, "a\u{1b}]0;title\u{7}b\tc\r\nd\u{9b}e");
    x.judgments.clear();
    s.open(q, vec![x]);
    let text = screen(&s);
    assert!(text.contains("response  a␛]0;title␇b    c") && text.contains("          d�e") && !text.contains('\u{1b}'), "{text}");
}

#[test]
fn plain_text_is_the_board_aligned() {
    let mut d = two_suites();
    d.truncate(1);
    let s = state(d);
    let want = "\
model  overall  arith · exact-match   copy · bleu
-----  -------  -------------------  ------------
beta     0.650        0.500 ± 0.100  80.00 ± 4.00
gamma    0.550        0.700 ± 0.100  40.00 ± 3.00
alpha    0.500        0.900 ± 0.100  10.00 ± 2.50
";
    assert_eq!(plain(&s.board), want);
    // A model without a value: an em dash, last.
    let d = vec![data("r1", "s", vec![agg("a", "t", "", "acc", 0.5, 0.1), Aggregate { value: None, ci95: None, errors: 3, ..agg("b", "t", "", "acc", 0.0, 0.0) }])];
    assert_eq!(plain(&state(d).board), "model  overall           t · acc\n-----  -------  ----------------\na        0.500     0.500 ± 0.100\nb            —  no value (3 err)\n");
}

#[test]
fn a_cell_without_samples_says_so_and_stays_on_the_board() {
    let mut s = state(two_suites());
    type_keys(&mut s, "ll");
    let Some(Request::Samples(q)) = press(&mut s, KeyCode::Enter) else { panic!() };
    s.open(q, vec![]);
    assert!(s.drill.is_none());
    assert!(screen(&s).contains("no samples of alpha × arith · exact-match in the runs in view"));
}

#[test]
fn the_window_follows_the_cursor_across_many_columns_and_rows() {
    let mut aggs = Vec::new();
    for m in 0..30 {
        for t in 0..12 {
            aggs.push(agg(&format!("model-{m:02}"), &format!("task-{t:02}"), "", "exact-match", (m * 12 + t) as f64 / 400.0, 0.01));
        }
    }
    let mut s = State::new(vec![data("r1", "s", aggs)], vec![], (60, 12));
    type_keys(&mut s, "$");
    let text = screen(&s);
    assert!(text.contains("task-11") && !text.contains("task-00"), "the last column in view:\n{text}");
    assert!(text.lines().nth(3).unwrap().starts_with("model-"), "the model column stays");
    type_keys(&mut s, "G");
    assert!(screen(&s).contains("model-00"), "rows by overall: the lowest last");
    type_keys(&mut s, "0g");
    let text = screen(&s);
    assert!(text.contains("model-29") && text.contains("task-00") && !text.contains("model-00"), "{text}");
}
