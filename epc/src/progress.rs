//! Progress bars for steps that can take more than a second (hidden when stderr is no terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items labelled `what`.
pub fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_owned());
    bar
}
