//! Review rev9: durability of the embedded log through its public surface (docs/log.md):
//! kill -9 of a consuming child mid-message, the lock against a second process, torn and
//! corrupt segments, the `Always` / `Never` / `Interval` sync promises (`stats().syncs`),
//! committed offsets across restarts, compaction against groups that have not read, late
//! subscribers, records larger than a segment, many topics, odd names, and dead letters.

use std::path::{Path, PathBuf};

use switchyard_log::{LogConfig, Retention};

mod groups;
mod process;
mod storage;

pub(super) const CHILD_ENV: &str = "SWITCHYARD_LOG_REV9_CHILD";
pub(super) const MODE_ENV: &str = "SWITCHYARD_LOG_REV9_MODE";

pub(super) fn segments(dir: &Path, stream: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("streams").join(stream))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

pub(super) fn small(dir: &Path) -> LogConfig {
    LogConfig::new(dir)
        .with_segment_bytes(4096)
        .with_retention(Retention::unlimited())
}
