//! The progress bar drawn on stderr while traces load: lynload tells ([`load::Progress`]), this draws.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::load;

/// A bar of files read, drawn only when there are enough files for loading to take a while; a new one
/// for each load it is told of (a diff loads two sides).
#[derive(Default)]
pub struct Bar(Mutex<Option<ProgressBar>>);

impl Bar {
    /// Fewer files than this load too fast for a bar to be more than a flicker.
    const MIN_FILES: usize = 21;

    fn current(&self) -> Option<ProgressBar> {
        self.0.lock().ok().and_then(|bar| bar.clone())
    }
}

impl load::Progress for Bar {
    fn begin(&self, files: usize) {
        if files < Self::MIN_FILES {
            return;
        }
        let bar = ProgressBar::new(files as u64);
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} files, {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("loading traces");
        if let Ok(mut current) = self.0.lock() {
            *current = Some(bar);
        }
    }

    fn advance(&self) {
        if let Some(bar) = self.current() {
            bar.inc(1);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.0.lock().ok().and_then(|mut current| current.take()) {
            bar.finish_and_clear();
        }
    }
}
