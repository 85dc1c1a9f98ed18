//! The event loop: the only code that touches the terminal. A guard puts the terminal back (raw
//! mode off, main screen, cursor shown) when the loop ends, returns an error or panics.

use super::render::render;
use super::state::{Request, SampleQuery, State};
use crate::results::SampleView;
use crate::store::Store;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::{Hide, Show};
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::Terminal;
use std::collections::HashMap;
use std::io::stdout;

/// Puts the terminal back when dropped, and (once per process) before a panic's message.
struct TerminalGuard;

fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, Show);
}

impl TerminalGuard {
    fn enter() -> std::io::Result<TerminalGuard> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        // Made first, so a failure half-way still restores what was changed.
        let guard = TerminalGuard;
        enable_raw_mode()?;
        execute!(stdout(), EnterAlternateScreen, Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// The samples `q` asks for, read once per run from the store.
fn fetch(store: &Store, state: &State, q: &SampleQuery, cache: &mut HashMap<String, Vec<SampleView>>) -> crate::Result<Vec<SampleView>> {
    let mut out = Vec::new();
    for id in &q.runs {
        if !cache.contains_key(id) {
            let Some(d) = state.run_data(id) else { continue };
            cache.insert(id.clone(), crate::results::samples(store, std::slice::from_ref(d))?);
        }
        out.extend(cache[id].iter().filter(|s| q.matches(s)).cloned());
    }
    Ok(out)
}

/// Runs the view until the person quits.
pub fn run(store: &Store, mut state: State) -> std::io::Result<()> {
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
    let mut cache = HashMap::new();
    while !state.quit {
        let size = terminal.size()?;
        if (size.width, size.height) != state.size {
            state.resize(size.width, size.height);
        }
        terminal.draw(|f| render(f, &state))?;
        match event::read()? {
            Event::Key(k) if k.kind == KeyEventKind::Press => {
                if let Some(Request::Samples(q)) = state.key(k) {
                    match fetch(store, &state, &q, &mut cache) {
                        Ok(samples) => state.open(q, samples),
                        Err(e) => state.message = Some(format!("cannot read the samples: {e}")),
                    }
                }
            }
            Event::Resize(w, h) => state.resize(w, h),
            _ => {}
        }
    }
    Ok(())
}
