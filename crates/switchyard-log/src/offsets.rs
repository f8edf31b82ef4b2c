//! Committed group offsets: one small file per (stream, group), replaced atomically.
//!
//! File format: `[offset: u64 LE][crc32c of those 8 bytes: u32 LE]`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name for a group: safe characters kept, everything else as `%XX`.
pub(crate) fn group_file(dir: &Path, group: &str) -> PathBuf {
    let mut name = String::with_capacity(group.len() + 7);
    for b in group.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name.push_str(".offset");
    dir.join(name)
}

fn group_name(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".offset")?;
    let mut bytes = Vec::with_capacity(stem.len());
    let mut it = stem.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            let s = std::str::from_utf8(&hex).ok()?;
            bytes.push(u8::from_str_radix(s, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// Writes one committed offset (temp file, sync, rename).
pub(crate) fn store(dir: &Path, group: &str, offset: u64) -> std::io::Result<()> {
    let path = group_file(dir, group);
    let tmp = path.with_extension("offset.tmp");
    let mut buf = [0u8; 12];
    buf[..8].copy_from_slice(&offset.to_le_bytes());
    buf[8..].copy_from_slice(&crc32c::crc32c(&offset.to_le_bytes()).to_le_bytes());
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_data()?;
    fs::rename(&tmp, &path)
}

fn parse(buf: &[u8]) -> Option<u64> {
    let off: [u8; 8] = buf.get(..8)?.try_into().ok()?;
    let crc: [u8; 4] = buf.get(8..12)?.try_into().ok()?;
    (buf.len() == 12 && crc32c::crc32c(&off) == u32::from_le_bytes(crc))
        .then(|| u64::from_le_bytes(off))
}

/// Every committed offset in `dir`. Damaged files are skipped with a warning (the group then
/// starts from the oldest record: at-least-once, never a skip).
pub(crate) fn load_all(dir: &Path) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let fname = entry.file_name();
        let Some(group) = fname.to_str().and_then(group_name) else {
            continue;
        };
        match fs::read(entry.path()).ok().as_deref().and_then(parse) {
            Some(offset) => {
                out.insert(group, offset);
            }
            None => {
                tracing::warn!(
                    path = %entry.path().display(),
                    "damaged committed-offset file; the group restarts from the oldest record"
                );
                out.insert(group, 0);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), "billing/eu %1", 42).unwrap();
        store(dir.path(), "plain", 7).unwrap();
        let all = load_all(dir.path());
        assert_eq!(all.get("billing/eu %1"), Some(&42));
        assert_eq!(all.get("plain"), Some(&7));
    }
}
