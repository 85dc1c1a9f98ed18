//! `llmeval arena vote`: a person compares two anonymous answers and votes; the names are shown
//! after the vote. Votes are stored like judgments (judge `human:<name>`, both orders agreeing),
//! so `arena ratings --db` counts them as battles.

use crate::store::{Judgment, Store};
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

/// One comparison to vote on; `first`/`second` are the models in display order.
#[derive(Debug, Clone)]
pub struct Pair {
    pub task: String,
    pub item: i64,
    pub prompt: String,
    pub first: String,
    pub first_answer: String,
    pub second: String,
    pub second_answer: String,
}

/// A person's vote, in display terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    First,
    Second,
    Tie,
    BothBad,
}

/// What the screen shows and what has been decided.
pub struct State {
    pub pairs: Vec<Pair>,
    pub index: usize,
    /// The vote on the current pair, once cast (names are then revealed).
    pub voted: Option<Vote>,
    pub scroll: u16,
    pub help: bool,
    pub done: usize,
    pub quit: bool,
}

/// What a key press asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Cast(Vote),
    Skip,
    Next,
    Scroll(i16),
    Help,
    Quit,
    None,
}

pub fn action_for(c: char) -> Action {
    match c {
        'a' | 'A' | '1' => Action::Cast(Vote::First),
        'b' | 'B' | '2' => Action::Cast(Vote::Second),
        't' | 'T' => Action::Cast(Vote::Tie),
        'x' | 'X' => Action::Cast(Vote::BothBad),
        's' | 'S' => Action::Skip,
        'n' | 'N' | '\n' | ' ' => Action::Next,
        'j' => Action::Scroll(1),
        'k' => Action::Scroll(-1),
        '?' => Action::Help,
        'q' | 'Q' => Action::Quit,
        _ => Action::None,
    }
}

impl State {
    pub fn new(pairs: Vec<Pair>) -> State {
        State { pairs, index: 0, voted: None, scroll: 0, help: false, done: 0, quit: false }
    }

    pub fn current(&self) -> Option<&Pair> {
        self.pairs.get(self.index)
    }

    /// Applies an action; returns the vote to store, if one was cast.
    pub fn apply(&mut self, a: Action) -> Option<(Pair, Vote)> {
        match a {
            Action::Cast(v) if self.voted.is_none() && self.current().is_some() => {
                self.voted = Some(v);
                self.done += 1;
                return self.current().cloned().map(|p| (p, v));
            }
            Action::Skip | Action::Next if self.current().is_some() && (a == Action::Skip || self.voted.is_some()) => {
                self.index += 1;
                self.voted = None;
                self.scroll = 0;
            }
            Action::Scroll(d) => self.scroll = self.scroll.saturating_add_signed(d),
            Action::Help => self.help = !self.help,
            Action::Quit => self.quit = true,
            _ => {}
        }
        if self.current().is_none() {
            self.quit = true;
        }
        None
    }
}

/// Draws the state.
pub fn render(f: &mut Frame, s: &State) {
    let area = f.area();
    let rows = Layout::default().direction(Direction::Vertical).constraints([Constraint::Length(1), Constraint::Percentage(30), Constraint::Min(3), Constraint::Length(1)]).split(area);
    let Some(p) = s.current() else {
        f.render_widget(Paragraph::new(format!("No more pairs. {} vote(s) recorded. Press q.", s.done)), area);
        return;
    };
    f.render_widget(Paragraph::new(format!("llmeval arena vote · pair {} of {} · {} voted", s.index + 1, s.pairs.len(), s.done)).style(Style::default().add_modifier(Modifier::BOLD)), rows[0]);
    f.render_widget(Paragraph::new(p.prompt.as_str()).wrap(Wrap { trim: false }).block(Block::default().borders(Borders::ALL).title(format!(" Prompt ({} #{}) ", p.task, p.item))), rows[1]);
    let cols = Layout::default().direction(Direction::Horizontal).constraints([Constraint::Percentage(50), Constraint::Percentage(50)]).split(rows[2]);
    let title = |slot: &str, model: &str| match s.voted {
        Some(_) => format!(" {slot}: {model} "),
        None => format!(" {slot} "),
    };
    for (i, (slot, model, answer)) in [("Assistant A", &p.first, &p.first_answer), ("Assistant B", &p.second, &p.second_answer)].into_iter().enumerate() {
        f.render_widget(Paragraph::new(answer.as_str()).wrap(Wrap { trim: false }).scroll((s.scroll, 0)).block(Block::default().borders(Borders::ALL).title(title(slot, model))), cols[i]);
    }
    let footer = if s.help {
        "a/1: A better · b/2: B better · t: tie · x: both bad · s: skip · n/Enter: next · j/k: scroll · q: quit".to_string()
    } else if let Some(v) = s.voted {
        format!("Voted {v:?}. n/Enter: next pair · q: quit · ?: keys")
    } else {
        "a: A better · b: B better · t: tie · x: both bad · s: skip · ?: keys · q: quit".to_string()
    };
    f.render_widget(Paragraph::new(Line::from(Span::raw(footer))), rows[3]);
}

/// Stores a vote as two agreeing judgments (one per order), so it reads back as one battle.
pub fn store_vote(store: &Store, run_id: &str, voter: &str, p: &Pair, v: Vote) -> crate::Result<()> {
    let (o1, o2) = match v {
        Vote::First => ("A", "B"),
        Vote::Second => ("B", "A"),
        Vote::Tie | Vote::BothBad => ("tie", "tie"),
    };
    for (order, verdict) in [(1, o1), (2, o2)] {
        store.put_judgment(
            run_id,
            &Judgment {
                task: p.task.clone(),
                metric: "human-vote".into(),
                item: p.item,
                model: p.first.clone(),
                opponent: p.second.clone(),
                order,
                judge_model: format!("human:{voter}"),
                template: "human".into(),
                template_hash: String::new(),
                prompt: p.prompt.clone(),
                raw: Some(format!("{v:?}")),
                verdict: Some(verdict.into()),
                error: None,
            },
        )?;
    }
    Ok(())
}

/// Runs the view until the person quits.
pub fn event_loop(store: &Store, run_id: &str, voter: &str, mut state: State) -> std::io::Result<usize> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        while !state.quit {
            terminal.draw(|f| render(f, &state))?;
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                let a = match k.code {
                    KeyCode::Char(c) => action_for(c),
                    KeyCode::Enter => Action::Next,
                    KeyCode::Down => Action::Scroll(1),
                    KeyCode::Up => Action::Scroll(-1),
                    KeyCode::Esc => Action::Quit,
                    _ => Action::None,
                };
                if let Some((p, v)) = state.apply(a) {
                    store_vote(store, run_id, voter, &p, v).map_err(std::io::Error::other)?;
                }
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result.map(|_| state.done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn pair() -> Pair {
        Pair { task: "t".into(), item: 3, prompt: "What is 2+2?".into(), first: "alpha".into(), first_answer: "4".into(), second: "beta".into(), second_answer: "5".into() }
    }

    fn screen(s: &State) -> String {
        let mut t = Terminal::new(TestBackend::new(80, 20)).unwrap();
        t.draw(|f| render(f, s)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height).map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>() + "\n").collect()
    }

    #[test]
    fn names_are_hidden_until_the_vote() {
        let mut s = State::new(vec![pair(), pair()]);
        let before = screen(&s);
        assert!(before.contains("What is 2+2?") && before.contains("Assistant A") && before.contains("Assistant B"));
        assert!(!before.contains("alpha") && !before.contains("beta"), "{before}");
        let cast = s.apply(action_for('b')).unwrap();
        assert_eq!(cast.1, Vote::Second);
        let after = screen(&s);
        assert!(after.contains("alpha") && after.contains("beta"), "{after}");
        // A second vote on the same pair is ignored; Enter moves on.
        assert!(s.apply(action_for('a')).is_none());
        s.apply(Action::Next);
        assert_eq!((s.index, s.voted), (1, None));
        s.apply(action_for('s'));
        assert!(s.quit, "no pairs left");
        assert!(screen(&s).contains("1 vote(s) recorded"));
    }

    #[test]
    fn help_and_small_terminals() {
        let mut s = State::new(vec![pair()]);
        s.apply(action_for('?'));
        assert!(screen(&s).contains("both bad"));
        let mut t = Terminal::new(TestBackend::new(20, 5)).unwrap();
        t.draw(|f| render(f, &s)).unwrap();
    }
}
