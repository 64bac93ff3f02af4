//! Progress on a terminal: one bar per running task (bytes, rate, ETA) under a line
//! that counts finished tasks. Only used when stderr is a terminal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// `GALLEY_TIMINGS=1`: one stderr line per finished task, with when it started and ended
/// (seconds since the command began) and how many bytes it moved, to see where a build's
/// time goes. Stages between tasks (planning, keying) show as gaps.
pub struct Timings {
    begun: Instant,
    tasks: Mutex<HashMap<usize, (String, f64, u64)>>,
    next: AtomicUsize,
}

impl Timings {
    /// The timing reporter when `GALLEY_TIMINGS` is set to anything but empty or `0`.
    pub fn from_env() -> Option<Self> {
        let on = std::env::var("GALLEY_TIMINGS").is_ok_and(|v| !v.is_empty() && v != "0");
        on.then(|| Self { begun: Instant::now(), tasks: Mutex::new(HashMap::new()), next: AtomicUsize::new(1) })
    }
}

impl Reporter for Timings {
    fn on_task_start(&self, kind: TaskKind, label: &str, _total: Option<u64>) -> usize {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let started = self.begun.elapsed().as_secs_f64();
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.insert(id, (format!("{} {label}", verb(kind)), started, 0));
        }
        id
    }

    fn on_task_progress(&self, id: usize, bytes: u64) {
        if let Some(task) = self.tasks.lock().ok().as_mut().and_then(|t| t.get_mut(&id)) {
            task.2 += bytes;
        }
    }

    fn on_task_done(&self, id: usize) {
        let ended = self.begun.elapsed().as_secs_f64();
        if let Some((label, started, bytes)) = self.tasks.lock().ok().and_then(|mut t| t.remove(&id)) {
            let mib = bytes as f64 / f64::from(1 << 20);
            eprintln!("timing: {started:8.2}s {ended:8.2}s {:7.2}s {mib:9.1} MiB  {label}", ended - started);
        }
    }

    fn on_note(&self, message: &str) {
        eprintln!("note: {message}");
    }
}
