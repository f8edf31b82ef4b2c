//! Committed group offsets: one file per stream (`groups/OFFSETS`) holding every group's
//! offset, replaced atomically (temporary file, sync, rename), so a commit round costs one
//! sync however many groups moved.
//!
//! File format: `SWYOFS01`, the entry count (u32 LE), per entry `[name length: u16 LE][name:
//! UTF-8][offset: u64 LE]`, then a CRC32C (u32 LE) of everything before it.
//!
//! Older logs kept one file per group (`groups/<group>.offset`: `[offset: u64 LE][crc32c of
//! those 8 bytes: u32 LE]`). They are still read; opening a stream writes what they hold into
//! `OFFSETS` and removes them.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name for a group in the older layout: safe characters kept, everything else as `%XX`.
#[cfg(test)]
fn group_file(dir: &Path, group: &str) -> PathBuf {
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

/// Name of the file holding every group's committed offset.
pub(crate) const FILE: &str = "OFFSETS";
const MAGIC: &[u8; 8] = b"SWYOFS01";

/// Path of the offsets file in a stream's `groups` directory.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Longest group name the file format stores (its length is a u16).
pub(crate) const MAX_GROUP_NAME: usize = u16::MAX as usize;

/// Writes every committed offset of a stream in one file (temp file, sync, rename).
///
/// An entry the format cannot hold (a name longer than [`MAX_GROUP_NAME`], which subscribe
/// refuses) is left out with a warning: one bad entry never stops the other groups'
/// offsets from being written.
pub(crate) fn store_all(dir: &Path, offsets: &HashMap<String, u64>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16 + offsets.len() * 48);
    buf.extend_from_slice(MAGIC);
    // The count, filled in once the entries that fit are known.
    buf.extend_from_slice(&[0; 4]);
    let mut count: u32 = 0;
    for (group, offset) in offsets {
        let Ok(len) = u16::try_from(group.len()) else {
            tracing::warn!(
                bytes = group.len(),
                "group name too long for the committed-offsets file; its offset is not stored"
            );
            continue;
        };
        count = count
            .checked_add(1)
            .ok_or_else(|| std::io::Error::other("more than u32::MAX groups"))?;
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(group.as_bytes());
        buf.extend_from_slice(&offset.to_le_bytes());
    }
    buf[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let path = path(dir);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_data()?;
    fs::rename(&tmp, &path)
}

fn parse_all(buf: &[u8]) -> Option<HashMap<String, u64>> {
    let (body, crc) = buf.split_at_checked(buf.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let rest = body.strip_prefix(MAGIC.as_slice())?;
    let (count, mut rest) = rest.split_at_checked(4)?;
    let count = u32::from_le_bytes(count.try_into().ok()?);
    let mut out = HashMap::new();
    for _ in 0..count {
        let (len, r) = rest.split_at_checked(2)?;
        let len = usize::from(u16::from_le_bytes(len.try_into().ok()?));
        let (name, r) = r.split_at_checked(len)?;
        let (offset, r) = r.split_at_checked(8)?;
        out.insert(
            String::from_utf8(name.to_vec()).ok()?,
            u64::from_le_bytes(offset.try_into().ok()?),
        );
        rest = r;
    }
    rest.is_empty().then_some(out)
}

/// What [`load_all`] found in a stream's `groups` directory.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// Group → committed offset.
    pub offsets: HashMap<String, u64>,
    /// Per-group files of the older layout that were read (to be folded into `OFFSETS`).
    pub legacy: Vec<PathBuf>,
    /// The offsets file was there but damaged: which groups it held is unknown.
    pub damaged: bool,
}

/// Writes one committed offset in the older per-group layout (tests of the migration).
#[cfg(test)]
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

/// Every committed offset in `dir`: the offsets file, over any per-group files of the older
/// layout. A damaged per-group file gives its group offset 0 (it starts again from the
/// oldest record: at-least-once, never a skip); a damaged offsets file is reported in
/// [`Loaded::damaged`], and the per-group files, if any, are used.
pub(crate) fn load_all(dir: &Path) -> Loaded {
    let mut out = Loaded::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let fname = entry.file_name();
        let Some(group) = fname.to_str().and_then(group_name) else {
            continue;
        };
        out.legacy.push(entry.path());
        match fs::read(entry.path()).ok().as_deref().and_then(parse) {
            Some(offset) => {
                out.offsets.insert(group, offset);
            }
            None => {
                tracing::warn!(
                    path = %entry.path().display(),
                    "damaged committed-offset file; the group restarts from the oldest record"
                );
                out.offsets.insert(group, 0);
            }
        }
    }
    let all = path(dir);
    match fs::read(&all) {
        Ok(buf) => match parse_all(&buf) {
            Some(offsets) => out.offsets.extend(offsets),
            None => {
                tracing::warn!(
                    path = %all.display(),
                    "damaged committed-offsets file; the stream's groups restart from the oldest record"
                );
                out.damaged = true;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %all.display(), error = %e, "cannot read the committed-offsets file; the stream's groups restart from the oldest record");
            out.damaged = true;
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
        let mut all = HashMap::new();
        all.insert("billing/eu %1".to_owned(), 42);
        all.insert("plain".to_owned(), 7);
        all.insert(String::new(), 0);
        store_all(dir.path(), &all).unwrap();
        let loaded = load_all(dir.path());
        assert_eq!(loaded.offsets, all);
        assert!(loaded.legacy.is_empty() && !loaded.damaged);
    }

    #[test]
    fn a_name_too_long_for_the_format_is_left_out_and_the_others_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = HashMap::new();
        all.insert("a".to_owned(), 3);
        all.insert("g".repeat(MAX_GROUP_NAME + 1), 1);
        all.insert("b".repeat(MAX_GROUP_NAME), 2);
        store_all(dir.path(), &all).unwrap();
        let loaded = load_all(dir.path());
        assert!(!loaded.damaged);
        let mut want = HashMap::new();
        want.insert("a".to_owned(), 3);
        want.insert("b".repeat(MAX_GROUP_NAME), 2);
        assert_eq!(loaded.offsets, want);
    }

    #[test]
    fn per_group_files_are_read_and_the_offsets_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), "old", 3).unwrap();
        store(dir.path(), "both", 5).unwrap();
        let mut all = HashMap::new();
        all.insert("both".to_owned(), 9);
        store_all(dir.path(), &all).unwrap();
        let loaded = load_all(dir.path());
        assert_eq!(loaded.offsets.get("old"), Some(&3));
        assert_eq!(loaded.offsets.get("both"), Some(&9));
        assert_eq!(loaded.legacy.len(), 2);
    }

    #[test]
    fn a_damaged_offsets_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = HashMap::new();
        all.insert("g".to_owned(), 4);
        store_all(dir.path(), &all).unwrap();
        let p = path(dir.path());
        let mut buf = fs::read(&p).unwrap();
        buf[14] ^= 0xff;
        fs::write(&p, &buf).unwrap();
        let loaded = load_all(dir.path());
        assert!(loaded.damaged);
        assert!(loaded.offsets.is_empty());
        // Truncated anywhere: damaged, never a panic.
        let good = {
            store_all(dir.path(), &all).unwrap();
            fs::read(&p).unwrap()
        };
        for n in 0..good.len() {
            assert!(parse_all(&good[..n]).is_none(), "prefix of {n} bytes");
        }
    }
}
