//! Progress on a terminal: one bar per running task (bytes, rate, ETA) under a line
//! that counts finished tasks. Only used when stderr is a terminal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use galley::progress::{Reporter, TaskKind};

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<usize, ProgressBar>>,
    next: AtomicUsize,
}

impl Bars {
    pub fn new() -> Self {
        Self { multi: MultiProgress::new(), bars: Mutex::new(HashMap::new()), next: AtomicUsize::new(1) }
    }
}

fn verb(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Download => "download",
        TaskKind::Install => "install",
        TaskKind::Pack => "pack",
        TaskKind::Upload => "upload",
        TaskKind::Import => "import",
    }
}

impl Reporter for Bars {
    fn on_task_start(&self, kind: TaskKind, label: &str, total: Option<u64>) -> usize {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{prefix:>9.cyan} {wide_msg} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix:>9.cyan} {wide_msg} {bytes:>10} {spinner}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        let bar = self.multi.add(bar.with_prefix(verb(kind)).with_message(label.to_owned()));
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(id, bar);
        }
        id
    }

    fn on_task_progress(&self, id: usize, bytes: u64) {
        if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(&id).cloned()) {
            bar.inc(bytes);
        }
    }

    fn on_task_done(&self, id: usize) {
        if let Some(bar) = self.bars.lock().ok().and_then(|mut b| b.remove(&id)) {
            bar.finish_and_clear();
        }
    }

    fn on_note(&self, message: &str) {
        let _ = self.multi.println(format!("note: {message}"));
    }
}

/// Without a terminal: no progress, but notes still reach stderr.
pub struct NotesOnly;

impl Reporter for NotesOnly {
    fn on_note(&self, message: &str) {
        eprintln!("note: {message}");
    }
}
