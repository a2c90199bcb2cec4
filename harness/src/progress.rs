//! A progress bar on stderr for the verbs that move a lot of data (`read`,
//! `verify`), only for a person watching: stderr a terminal and no `--json`.
//! Piped or in JSON mode nothing is drawn, so scripts and logs see none.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` bytes, labelled `what`, or `None` when stderr is
/// not a terminal or the output is JSON.
pub fn bytes(total: u64, what: &str, json: bool) -> Option<ProgressBar> {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} ({binary_bytes_per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    Some(pb)
}
