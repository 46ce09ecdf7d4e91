//! What a long run shows while it runs: bars and spinners on stderr when
//! stderr is a terminal, and nothing when it is not or when `--json` was
//! asked for (the output is then for a program, and a log of a CI run has
//! no use for redrawn lines). Standard output carries only the results.

use std::{borrow::Cow, io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};

/// How often spinners and timed bars redraw.
const TICK: Duration = Duration::from_millis(200);

/// Whether a run draws its progress, and how.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    shown: bool,
}

impl Progress {
    /// Progress on a terminal, unless the run's output is JSON.
    pub fn new(json: bool) -> Self {
        Self {
            shown: !json && std::io::stderr().is_terminal(),
        }
    }

    /// No progress at all: for runs nested in a run that shows its own.
    pub fn hidden() -> Self {
        Self { shown: false }
    }

    /// A bar over `len` steps; `template` is indicatif's.
    pub fn bar(&self, len: u64, template: &str) -> ProgressBar {
        if !self.shown {
            return ProgressBar::hidden();
        }
        ProgressBar::new(len).with_style(style(template))
    }

    /// A spinner that shows its message and the time it has run.
    pub fn spinner(&self, message: impl Into<Cow<'static, str>>) -> ProgressBar {
        if !self.shown {
            return ProgressBar::hidden();
        }
        let spinner = ProgressBar::new_spinner()
            .with_style(style("{spinner} {prefix}{msg} ({elapsed})"))
            .with_message(message);
        spinner.enable_steady_tick(TICK);
        spinner
    }

    /// A bar that fills in `length` of wall time, for runs of a set length
    /// (a benchmark's duration). It stops filling when finished or dropped.
    pub fn timed(&self, length: Duration, message: impl Into<Cow<'static, str>>) -> ProgressBar {
        if !self.shown {
            return ProgressBar::hidden();
        }
        let millis = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
        let bar = ProgressBar::new(millis)
            .with_style(style(&format!(
                "{{spinner}} {{msg}} [{{bar:40}}] {{elapsed}} of {}s",
                length.as_secs()
            )))
            .with_message(message);
        let ticking = bar.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            while let Some(bar) = ticking.upgrade() {
                if bar.is_finished() {
                    break;
                }
                let elapsed = u64::try_from(bar.elapsed().as_millis()).unwrap_or(u64::MAX);
                bar.set_position(elapsed.min(millis));
                drop(bar);
                tick.tick().await;
            }
        });
        bar
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_runs_draw_nothing() {
        let progress = Progress::new(true);
        assert!(progress.bar(10, "{bar}").is_hidden());
        assert!(progress.spinner("waiting").is_hidden());
        assert!(progress.timed(Duration::from_secs(1), "bench").is_hidden());
    }
}
