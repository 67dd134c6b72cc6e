//! Progress on the terminal for the CLI's long runs: `publish` of a large file and `subscribe
//! --from` over a long log. Drawn with indicatif on stderr, and only where nothing else reads it.
//!
//! The rule: progress shows when stderr is a terminal and stdout is not a pipe or a socket.
//! Output into a pipe feeds another program, which may draw on the same terminal itself (`| less`)
//! or be a script's pipeline, so nothing is drawn then; output on the terminal or into a file
//! (`> receipts.txt`) is fine, and the bar matters most there, being the only sign of life.
//! indicatif adds a condition of its own: `TERM` set, and not to `dumb`. Stdout carries the same
//! bytes with the bar as without it: the bar, and the erasing of it, go to stderr only.

use std::{
    fs::File,
    io::{self, IsTerminal},
    os::{fd::AsFd, unix::fs::FileTypeExt},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How a bar fills, in ASCII: it reads on any terminal and is one column a character wide.
const BAR_CHARS: &str = "=> ";
/// How a spinner turns, in ASCII for the same reason; the last is its finished state.
const SPINNER_CHARS: &str = "-\\|/ ";

/// Whether progress may be drawn, by the rule in this module's documentation.
pub fn wanted() -> bool {
    io::stderr().is_terminal() && !stdout_is_a_pipe()
}

/// Whether stdout leads into a pipe or a socket: to another program rather than to a person.
/// A stdout that cannot be examined (closed, say) counts as one, so nothing is drawn for it.
fn stdout_is_a_pipe() -> bool {
    let Ok(stdout) = io::stdout().as_fd().try_clone_to_owned() else {
        return true;
    };
    match File::from(stdout).metadata() {
        Ok(metadata) => {
            let kind = metadata.file_type();
            kind.is_fifo() || kind.is_socket()
        }
        Err(_) => true,
    }
}

/// A bar or a spinner on stderr, or nothing at all where progress does not show: a hidden one
/// draws nothing and prints only what it is given, so callers need not ask which they have.
#[derive(Debug)]
pub struct Progress {
    /// The bar; a hidden one where progress does not show.
    bar: ProgressBar,
    /// Whether stdout is a terminal, as stderr then is: most likely the same one, so a line for
    /// stdout must lift the bar off the screen first, or it would be written over the bar.
    stdout_on_screen: bool,
}

impl Progress {
    /// Nothing shown.
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            stdout_on_screen: false,
        }
    }

    /// A bar from 0 to `length`, headed `what` and counting `unit` (`publishing`, `lines`), where
    /// progress shows; else nothing.
    pub fn bar(what: &str, length: u64, unit: &str) -> Self {
        let template = format!("{what} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{elapsed}})");
        Self::with_style(
            Some(length),
            ProgressStyle::with_template(&template).map(|style| style.progress_chars(BAR_CHARS)),
        )
    }

    /// A spinner counting `unit` when there is no knowing how many will come (input from a
    /// pipe), headed `what`, where progress shows; else nothing.
    pub fn spinner(what: &str, unit: &str) -> Self {
        let template = format!("{{spinner}} {what} {{pos}} {unit} ({{elapsed}})");
        Self::with_style(
            None,
            ProgressStyle::with_template(&template).map(|style| style.tick_chars(SPINNER_CHARS)),
        )
    }

    fn with_style(
        length: Option<u64>,
        style: Result<ProgressStyle, indicatif::style::TemplateError>,
    ) -> Self {
        // The templates are this module's own, so a bad one is a bug; showing nothing then is
        // better than failing the command over its progress.
        let style = match style {
            Ok(style) => style,
            Err(error) => {
                debug_assert!(false, "bad progress template: {error}");
                return Self::hidden();
            }
        };
        if !wanted() {
            return Self::hidden();
        }
        let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr());
        bar.set_style(style);
        Self {
            stdout_on_screen: !bar.is_hidden() && io::stdout().is_terminal(),
            bar,
        }
    }

    /// Counts one more.
    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// Sets how many are done, up to the length: a count past it (the log grew meanwhile) shows
    /// as done rather than as more than all.
    pub fn set_position(&self, done: u64) {
        let done = self.bar.length().map_or(done, |length| done.min(length));
        self.bar.set_position(done);
    }

    /// Runs `print`, which writes to stdout, with the bar off the screen if stdout is on it.
    pub fn print<T>(&self, print: impl FnOnce() -> T) -> T {
        if self.stdout_on_screen {
            self.bar.suspend(print)
        } else {
            print()
        }
    }

    /// Prints `line` on stderr, above the bar.
    pub fn note(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Draws the final count and leaves it on the screen; what is printed next goes below it.
    pub fn finish(&self) {
        self.bar.finish();
    }

    /// Erases the bar, for good: what follows is printed as if it had never been there.
    pub fn clear(&mut self) {
        self.bar.finish_and_clear();
        *self = Self::hidden();
    }
}
