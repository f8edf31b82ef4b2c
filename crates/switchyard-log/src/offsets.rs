//! Committed group offsets: one file per stream (`groups/OFFSETS`) holding every group's
//! position, replaced atomically (temporary file, sync, rename), so a commit round costs one
//! sync however many groups moved.
//!
//! A group's position is its committed offset (every record below it settled) and the
//! records settled above it (acked while an older record of the group was still unsettled:
//! held, put back with a delay, or waiting behind a busy key the look-ahead passed), as
//! ranges. A group holds at most about twice `max_ack_pending` records in memory, so there
//! are at most about as many ranges.
//!
//! File format, version 2: `SWYOFS02`, the entry count (u32 LE), per entry `[name length: u16
//! LE][name: UTF-8][offset: u64 LE][range count: u32 LE]` and per range `[gap: varint][length:
//! varint]` (LEB128; the gap counts from the offset for the first range, from the end of the
//! previous range after that; a range is `start..start + length`), then a CRC32C (u32 LE) of
//! everything before it. When no group has settled ranges the file is written in version 1,
//! which older versions of the log read: `SWYOFS01` and the same entries without the range
//! count and ranges.
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
/// Version 1: offsets only.
const MAGIC_V1: &[u8; 8] = b"SWYOFS01";
/// Version 2: offsets and settled ranges.
const MAGIC_V2: &[u8; 8] = b"SWYOFS02";

/// Settled records as half-open ranges `(start, end)`.
pub(crate) type Ranges = Vec<(u64, u64)>;

/// A group's position as stored: its committed offset and the records settled above it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Position {
    /// Every record below it is settled (the next one to consume, if none above is settled).
    pub offset: u64,
    /// Records settled above `offset`, as half-open ranges `(start, end)`: sorted, disjoint,
    /// not adjacent, every `start` above `offset` (see [`Position::normalised`]).
    pub settled: Ranges,
}

impl Position {
    /// A position with nothing settled above the offset.
    pub fn at(offset: u64) -> Self {
        Self {
            offset,
            settled: Vec::new(),
        }
    }

    /// The same position in its one spelling: ranges sorted and merged, empty ones and the
    /// parts at or below the offset dropped, and a range that starts at the offset folded
    /// into it (the offset moves to its end).
    pub fn normalised(offset: u64, mut ranges: Ranges) -> Self {
        ranges.retain(|&(s, e)| s < e);
        ranges.sort_unstable();
        let mut out: Ranges = Vec::with_capacity(ranges.len());
        let mut offset = offset;
        for (s, e) in ranges {
            if s <= offset {
                // Sorted by start: nothing was pushed yet (every pushed start is above the
                // offset, and the offset only moves before the first push).
                offset = offset.max(e);
                continue;
            }
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        Self {
            offset,
            settled: out,
        }
    }

    /// Brings the position back to `end` (records from `end` on were lost): the offset is at
    /// most `end` and no range reaches past it. Returns whether anything changed.
    pub fn clamp_to(&mut self, end: u64) -> bool {
        let before = self.clone();
        self.offset = self.offset.min(end);
        self.settled.retain(|&(s, _)| s < end);
        if let Some(last) = self.settled.last_mut() {
            last.1 = last.1.min(end);
        }
        *self != before
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        // The low seven bits, with the continuation bit.
        buf.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn take_varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        let shift = 7 * i as u32;
        if shift == 63 && bits > 1 {
            return None;
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Some((v, &buf[i + 1..]));
        }
    }
    None
}

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
pub(crate) fn store_all(dir: &Path, offsets: &HashMap<String, Position>) -> std::io::Result<()> {
    let v2 = offsets.values().any(|p| !p.settled.is_empty());
    let mut buf = Vec::with_capacity(16 + offsets.len() * 48);
    buf.extend_from_slice(if v2 { MAGIC_V2 } else { MAGIC_V1 });
    // The count, filled in once the entries that fit are known.
    buf.extend_from_slice(&[0; 4]);
    let mut count: u32 = 0;
    for (group, position) in offsets {
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
        buf.extend_from_slice(&position.offset.to_le_bytes());
        if v2 {
            put_ranges(&mut buf, position)?;
        }
    }
    buf[MAGIC_V1.len()..MAGIC_V1.len() + 4].copy_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let path = path(dir);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_data()?;
    fs::rename(&tmp, &path)
}

/// The settled ranges of a position (normalised), as the version-2 format has them.
fn put_ranges(buf: &mut Vec<u8>, position: &Position) -> std::io::Result<()> {
    let n = u32::try_from(position.settled.len())
        .map_err(|_| std::io::Error::other("more than u32::MAX settled ranges"))?;
    buf.extend_from_slice(&n.to_le_bytes());
    let mut at = position.offset;
    for &(s, e) in &position.settled {
        put_varint(buf, s.saturating_sub(at));
        put_varint(buf, e.saturating_sub(s));
        at = e;
    }
    Ok(())
}

/// The settled ranges of an entry whose offset is `offset`, and what follows them.
fn take_ranges(buf: &[u8], offset: u64) -> Option<(Ranges, &[u8])> {
    let (n, mut rest) = buf.split_at_checked(4)?;
    let n = u32::from_le_bytes(n.try_into().ok()?);
    // At least two bytes a range: a count larger than the rest is damage.
    if usize::try_from(n).ok()? > rest.len() / 2 {
        return None;
    }
    let mut ranges = Vec::with_capacity(n as usize);
    let mut at = offset;
    for _ in 0..n {
        let (gap, r) = take_varint(rest)?;
        let (len, r) = take_varint(r)?;
        let start = at.checked_add(gap)?;
        let end = start.checked_add(len)?;
        ranges.push((start, end));
        at = end;
        rest = r;
    }
    Some((ranges, rest))
}

fn parse_all(buf: &[u8]) -> Option<HashMap<String, Position>> {
    let (body, crc) = buf.split_at_checked(buf.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let (v2, rest) = match body.strip_prefix(MAGIC_V2.as_slice()) {
        Some(rest) => (true, rest),
        None => (false, body.strip_prefix(MAGIC_V1.as_slice())?),
    };
    let (count, mut rest) = rest.split_at_checked(4)?;
    let count = u32::from_le_bytes(count.try_into().ok()?);
    let mut out = HashMap::new();
    for _ in 0..count {
        let (len, r) = rest.split_at_checked(2)?;
        let len = usize::from(u16::from_le_bytes(len.try_into().ok()?));
        let (name, r) = r.split_at_checked(len)?;
        let (offset, r) = r.split_at_checked(8)?;
        let offset = u64::from_le_bytes(offset.try_into().ok()?);
        let (settled, r) = if v2 {
            take_ranges(r, offset)?
        } else {
            (Vec::new(), r)
        };
        out.insert(
            String::from_utf8(name.to_vec()).ok()?,
            Position::normalised(offset, settled),
        );
        rest = r;
    }
    rest.is_empty().then_some(out)
}

/// What [`load_all`] found in a stream's `groups` directory.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// Group → committed offset and settled ranges.
    pub offsets: HashMap<String, Position>,
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
                out.offsets.insert(group, Position::at(offset));
            }
            None => {
                tracing::warn!(
                    path = %entry.path().display(),
                    "damaged committed-offset file; the group restarts from the oldest record"
                );
                out.offsets.insert(group, Position::at(0));
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
        all.insert("billing/eu %1".to_owned(), Position::at(42));
        all.insert("plain".to_owned(), Position::at(7));
        all.insert(String::new(), Position::at(0));
        store_all(dir.path(), &all).unwrap();
        let loaded = load_all(dir.path());
        assert_eq!(loaded.offsets, all);
        assert!(loaded.legacy.is_empty() && !loaded.damaged);
    }

    #[test]
    fn a_name_too_long_for_the_format_is_left_out_and_the_others_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = HashMap::new();
        all.insert("a".to_owned(), Position::at(3));
        all.insert("g".repeat(MAX_GROUP_NAME + 1), Position::at(1));
        all.insert("b".repeat(MAX_GROUP_NAME), Position::at(2));
        store_all(dir.path(), &all).unwrap();
        let loaded = load_all(dir.path());
        assert!(!loaded.damaged);
        let mut want = HashMap::new();
        want.insert("a".to_owned(), Position::at(3));
        want.insert("b".repeat(MAX_GROUP_NAME), Position::at(2));
        assert_eq!(loaded.offsets, want);
    }

    #[test]
    fn per_group_files_are_read_and_the_offsets_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), "old", 3).unwrap();
        store(dir.path(), "both", 5).unwrap();
        let mut all = HashMap::new();
        all.insert("both".to_owned(), Position::at(9));
        store_all(dir.path(), &all).unwrap();
        let loaded = load_all(dir.path());
        assert_eq!(loaded.offsets.get("old"), Some(&Position::at(3)));
        assert_eq!(loaded.offsets.get("both"), Some(&Position::at(9)));
        assert_eq!(loaded.legacy.len(), 2);
    }

    #[test]
    fn a_damaged_offsets_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = HashMap::new();
        all.insert("g".to_owned(), Position::at(4));
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

    fn with_ranges(offset: u64, settled: &[(u64, u64)]) -> Position {
        Position {
            offset,
            settled: settled.to_vec(),
        }
    }

    #[test]
    fn settled_ranges_roundtrip_in_version_2_and_damage_anywhere_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = HashMap::new();
        all.insert(
            "g".to_owned(),
            with_ranges(5, &[(6, 9), (200, 201), (1 << 40, (1 << 40) + 3)]),
        );
        all.insert("plain".to_owned(), Position::at(7));
        all.insert(
            "top".to_owned(),
            with_ranges(u64::MAX - 4, &[(u64::MAX - 2, u64::MAX)]),
        );
        store_all(dir.path(), &all).unwrap();
        let good = fs::read(path(dir.path())).unwrap();
        assert_eq!(&good[..8], MAGIC_V2);
        let loaded = load_all(dir.path());
        assert!(!loaded.damaged);
        assert_eq!(loaded.offsets, all);
        for n in 0..good.len() {
            assert!(parse_all(&good[..n]).is_none(), "prefix of {n} bytes");
        }
        for at in 8..good.len() - 4 {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            assert!(parse_all(&bad).is_none(), "byte {at} flipped");
        }
    }

    #[test]
    fn without_settled_ranges_the_file_stays_in_version_1() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = HashMap::new();
        all.insert("g".to_owned(), Position::at(5));
        store_all(dir.path(), &all).unwrap();
        let bytes = fs::read(path(dir.path())).unwrap();
        assert_eq!(bytes, OLD_FORMAT, "what older versions of the log read");
    }

    /// `OFFSETS` as the log wrote it before settled ranges existed (version 1): one group
    /// "g" at offset 5. Fixed bytes, not written by the code under test.
    const OLD_FORMAT: &[u8] = &[
        b'S', b'W', b'Y', b'O', b'F', b'S', b'0', b'1', // magic
        1, 0, 0, 0, // one entry
        1, 0, b'g', // name
        5, 0, 0, 0, 0, 0, 0, 0, // offset
        0xfa, 0x02, 0xaf, 0x53, // crc32c
    ];

    #[test]
    fn a_file_of_the_older_format_is_read() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(path(dir.path()), OLD_FORMAT).unwrap();
        let loaded = load_all(dir.path());
        assert!(!loaded.damaged);
        assert_eq!(loaded.offsets.len(), 1);
        assert_eq!(loaded.offsets.get("g"), Some(&Position::at(5)));
    }

    #[test]
    fn positions_are_normalised() {
        // Unsorted, overlapping, adjacent, empty, below the offset, starting at it.
        let p = Position::normalised(
            10,
            vec![
                (30, 31),
                (4, 8),
                (12, 14),
                (10, 11),
                (14, 16),
                (20, 20),
                (11, 12),
            ],
        );
        assert_eq!(p, with_ranges(16, &[(30, 31)]));
        let p = Position::normalised(10, vec![(15, 20), (12, 13), (18, 25)]);
        assert_eq!(p, with_ranges(10, &[(12, 13), (15, 25)]));
        let mut p = with_ranges(10, &[(12, 13), (15, 25)]);
        assert!(!p.clamp_to(25));
        assert!(p.clamp_to(20));
        assert_eq!(p, with_ranges(10, &[(12, 13), (15, 20)]));
        assert!(p.clamp_to(14));
        assert_eq!(p, with_ranges(10, &[(12, 13)]));
        assert!(p.clamp_to(8));
        assert_eq!(p, Position::at(8));
    }

    #[test]
    fn varints_roundtrip_and_overlong_ones_are_refused() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            buf.push(0xaa);
            assert_eq!(take_varint(&buf), Some((v, &[0xaa][..])), "{v}");
        }
        assert_eq!(take_varint(&[0xff; 10]), None);
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(take_varint(&over), None, "past 64 bits");
        assert_eq!(take_varint(&[0x80]), None, "cut short");
    }
}
