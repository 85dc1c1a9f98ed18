//! Progress on stderr: done/total, rate, ETA, retries and errors. Drawn only on a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: ProgressBar,
    retries: u64,
    errors: u64,
}

impl Progress {
    /// A bar over `total` samples; hidden unless `show` and stderr is a terminal.
    pub fn new(total: u64, show: bool) -> Progress {
        let target = if show && std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message("retries 0 · errors 0");
        Progress { bar, retries: 0, errors: 0 }
    }

    pub fn set_label(&self, label: String) {
        self.bar.set_prefix(label);
    }

    /// One sample finished after `attempts` attempts, with or without an error.
    pub fn finished(&mut self, attempts: u32, errored: bool) {
        self.retries += u64::from(attempts.saturating_sub(1));
        self.errors += u64::from(errored);
        self.bar.set_message(format!("retries {} · errors {}", self.retries, self.errors));
        self.bar.inc(1);
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}
