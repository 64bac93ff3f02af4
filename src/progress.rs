//! Progress reporting as a seam: library stages call a [`Reporter`]; only the binary
//! knows about terminals (indicatif) or `--json`. Every hook defaults to doing nothing.

/// What a long-running task is doing, for grouping in the display.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    Download,
    Install,
    Pack,
    Upload,
    Import,
}

pub trait Reporter: Send + Sync {
    /// A task starts; `total` is its size in bytes when known. Returns an id for the other hooks.
    fn on_task_start(&self, _kind: TaskKind, _label: &str, _total: Option<u64>) -> usize {
        0
    }
    /// `bytes` more bytes of the task are done.
    fn on_task_progress(&self, _id: usize, _bytes: u64) {}
    /// The task finished (successfully or not).
    fn on_task_done(&self, _id: usize) {}
    /// A one-line note worth showing (a warning, a decision galley made).
    fn on_note(&self, _message: &str) {}
}

impl Reporter for () {}
