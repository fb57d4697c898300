//! A progress bar on stderr, drawn only when stderr is a terminal (and not with `--quiet`), so
//! that logs and pipes get no control characters.

use std::io::{IsTerminal, Write};

/// `label [#######.........] done/total`, redrawn in place.
pub struct Progress {
    label: &'static str,
    total: usize,
    enabled: bool,
}

impl Progress {
    const WIDTH: usize = 24;

    /// A bar for `total` steps; drawn only if `quiet` is false and stderr is a terminal.
    pub fn new(label: &'static str, total: usize, quiet: bool) -> Self {
        Progress { label, total, enabled: !quiet && std::io::stderr().is_terminal() }
    }

    /// Shows `done` of the total steps (ending the line when all are done).
    pub fn update(&self, done: usize) {
        if !self.enabled {
            return;
        }
        let total = self.total.max(1);
        let filled = done.min(total) * Self::WIDTH / total;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{}{}] {done}/{}",
            self.label,
            "#".repeat(filled),
            ".".repeat(Self::WIDTH - filled),
            self.total
        );
        if done >= self.total {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// A note on stderr unless `quiet`.
pub fn note(quiet: bool, text: &str) {
    if !quiet {
        eprintln!("{text}");
    }
}
