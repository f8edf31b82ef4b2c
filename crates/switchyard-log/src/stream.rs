//! One stream: its segment files, the in-memory offset → position index, recovery on open
//! and reads.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use switchyard_core::{Envelope, Pattern};

use crate::config::Recovery;
use crate::error::{Corruption, CorruptionKind, OpenError, ReadError};
use crate::fsio;
use crate::manifest::{self, Loaded, Manifest};
use crate::record::{self, HEADER, MAGIC, Parsed};

/// One segment file and its index.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Offset of the first record.
    pub base: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Byte position of each visible record (record `base + i` at `positions[i]`).
    pub positions: Vec<u32>,
    /// Visible length in bytes (magic included).
    pub len: u64,
    /// Time of the last write, for age-based retention.
    pub modified: SystemTime,
}

impl Segment {
    /// Offset after the last visible record.
    pub fn end(&self) -> u64 {
        self.base + self.positions.len() as u64
    }
}

/// The segments of a stream; guarded by [`StreamShared::index`].
#[derive(Debug)]
pub(crate) struct StreamIndex {
    /// Oldest first; never empty (the last one is the segment being written).
    pub segments: Vec<Segment>,
}

impl StreamIndex {
    /// Offset of the oldest retained record.
    pub fn first_offset(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.base)
    }

    /// Offset the next record will get (everything below is visible).
    pub fn next_offset(&self) -> u64 {
        self.segments.last().map_or(0, Segment::end)
    }

    /// Bytes in all segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}

/// A stream shared by the writer, consumer groups and the inspect API.
#[derive(Debug)]
pub(crate) struct StreamShared {
    pub name: String,
    pub dir: PathBuf,
    /// Topics this stream takes (empty for the catch-all stream).
    pub patterns: Vec<Pattern>,
    pub index: Mutex<StreamIndex>,
    /// Group positions known to be on disk (group name → committed offset, the next one to
    /// consume, and the records settled above it).
    pub committed: Mutex<HashMap<String, crate::offsets::Position>>,
    /// The offsets file was damaged at open: a group without an offset starts from the
    /// oldest record whatever the start position (it may have had one; never a skip).
    pub offsets_damaged: bool,
}

/// Locks a mutex, recovering from poisoning (state is kept consistent under every lock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// File name of the segment starting at `base`.
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Creates a new, empty segment (magic only).
pub(crate) fn create_segment(dir: &Path, base: u64, sync: bool) -> std::io::Result<Segment> {
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    fsio::write_all_at(&file, MAGIC, 0)?;
    if sync {
        file.sync_data()?;
        fsio::sync_dir(dir)?;
    }
    Ok(Segment {
        base,
        path,
        file: Arc::new(file),
        positions: Vec::new(),
        len: MAGIC.len() as u64,
        modified: SystemTime::now(),
    })
}

/// Looks for a good record after a damaged one: if there is one, the damage is not a torn
/// tail. `from` is the position of the damaged record; `next` the offset it should have had.
fn later_good_record(buf: &[u8], from: usize, next: u64) -> bool {
    let mut pos = from + 1;
    while pos + HEADER <= buf.len() {
        let rest = &buf[pos..];
        let plausible = record::offset_of(rest).is_some_and(|o| {
            o >= next && o <= next.saturating_add((buf.len() - from) as u64 / HEADER as u64)
        });
        if plausible && matches!(record::parse(rest, None), Parsed::Record { .. }) {
            return true;
        }
        pos += 1;
    }
    false
}

/// Scans one segment file. Returns the record positions and the length of the good prefix.
/// Damage in a segment that is not the last, or damage followed by a good record, is an
/// error; damage at the tail of the last segment is truncated away.
fn scan_segment(
    path: &Path,
    base: u64,
    is_last: bool,
    recovery: Recovery,
) -> Result<(File, Vec<u32>, u64), OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let buf = fs::read(path).map_err(io_err(path))?;
    let corrupt = |position: usize, offset: u64, kind| Corruption {
        path: path.to_path_buf(),
        position: position as u64,
        offset,
        kind,
    };
    if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        if is_last && MAGIC.starts_with(&buf[..buf.len().min(MAGIC.len())]) {
            // Torn while the segment was being created.
            tracing::warn!(path = %path.display(), bytes_dropped = buf.len(), "log recovery: rewriting torn segment header");
            file.set_len(0).map_err(io_err(path))?;
            fsio::write_all_at(&file, MAGIC, 0).map_err(io_err(path))?;
            file.sync_data().map_err(io_err(path))?;
            return Ok((file, Vec::new(), MAGIC.len() as u64));
        }
        return Err(corrupt(0, base, CorruptionKind::BadMagic).into());
    }
    let mut positions = Vec::new();
    let mut pos = MAGIC.len();
    while pos < buf.len() {
        let offset = base + positions.len() as u64;
        match record::parse(&buf[pos..], Some(offset)) {
            Parsed::Record { total } => {
                let p = u32::try_from(pos)
                    .map_err(|_| corrupt(pos, offset, CorruptionKind::BadLength))?;
                positions.push(p);
                pos += total;
            }
            // Zeros the writer wrote ahead and never used (a segment is trimmed at close
            // and at a roll; after a crash its tail is still there): the clean end. A record
            // never starts with a zero length, so no record is skipped here.
            Parsed::Short | Parsed::Bad(_) if buf[pos..].iter().all(|&b| b == 0) => {
                tracing::debug!(path = %path.display(), position = pos, zeros = buf.len() - pos, "log recovery: segment ends in space written ahead");
                break;
            }
            Parsed::Short | Parsed::Bad(_) if is_last => {
                let kind = match record::parse(&buf[pos..], Some(offset)) {
                    Parsed::Bad(k) => k,
                    _ => CorruptionKind::Truncated,
                };
                if recovery == Recovery::Strict && later_good_record(&buf, pos, offset) {
                    return Err(corrupt(pos, offset, kind).into());
                }
                let dropped = buf.len() - pos;
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    position = pos,
                    bytes_dropped = dropped,
                    reason = ?kind,
                    "log recovery: truncating torn or corrupt tail"
                );
                file.set_len(pos as u64).map_err(io_err(path))?;
                file.sync_data().map_err(io_err(path))?;
                break;
            }
            Parsed::Short => return Err(corrupt(pos, offset, CorruptionKind::Truncated).into()),
            Parsed::Bad(kind) => return Err(corrupt(pos, offset, kind).into()),
        }
    }
    Ok((file, positions, pos as u64))
}

/// Loads the committed offsets of every group and brings back to `end` (the end of the
/// recovered data) any that lie past it, and settled ranges that reach past it, on disk too.
/// Returns them, and whether the offsets file was damaged (the groups it held are unknown:
/// each starts from the oldest record).
///
/// A committed offset past the end means records the group had consumed were lost with
/// the tail (a power loss under `Interval`/`Never`, which sync offsets more often than
/// data, or a truncating recovery). New records take those offsets again; left as it was,
/// the offset would make the group skip them. Written back at once so that a later session
/// that appends before the group subscribes does not skip them either.
///
/// Per-group files of the older layout are folded into the offsets file and removed.
fn clamp_committed(
    stream: &str,
    groups_dir: &Path,
    end: u64,
) -> Result<(HashMap<String, crate::offsets::Position>, bool), OpenError> {
    let crate::offsets::Loaded {
        offsets: mut committed,
        legacy,
        damaged,
    } = crate::offsets::load_all(groups_dir);
    let mut rewrite = !legacy.is_empty();
    for (group, position) in committed.iter_mut() {
        let offset = position.offset;
        if !position.clamp_to(end) {
            continue;
        }
        if offset > end {
            tracing::warn!(
                stream,
                group = %group,
                committed = offset,
                end,
                "log recovery: committed offset is past the end of the recovered stream (records \
                 the group had consumed were lost); moved back to the end so that no new record \
                 is skipped"
            );
        } else {
            tracing::warn!(
                stream,
                group = %group,
                end,
                "log recovery: records the group had settled past the end of the recovered \
                 stream were lost; forgotten so that no new record is skipped"
            );
        }
        rewrite = true;
    }
    if rewrite {
        crate::offsets::store_all(groups_dir, &committed)
            .map_err(io_err(&crate::offsets::path(groups_dir)))?;
        for path in legacy {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a per-group offset file of the older layout (the offsets file holds its offset)");
            }
        }
    }
    Ok((committed, damaged))
}

/// Checks the segment files found (`bases`, sorted) against the stream's manifest, before
/// anything is scanned or repaired. Returns the manifest, if there is one.
///
/// Every segment from the recorded oldest to the recorded newest must be there: the oldest
/// missing means its records are gone, the newest missing means its offsets would be given
/// to new records. Both are refused as [`CorruptionKind::MissingSegment`], as is a damaged
/// manifest ([`CorruptionKind::BadManifest`]); removing the manifest accepts the files as
/// they are. No manifest (a new stream, or one written before manifests existed) is not an
/// error: the files are taken as found and the caller writes one.
fn check_manifest(dir: &Path, bases: &[u64]) -> Result<Option<Manifest>, OpenError> {
    let path = manifest::path(dir);
    let missing = |base: u64| Corruption {
        path: segment_path(dir, base),
        position: 0,
        offset: base,
        kind: CorruptionKind::MissingSegment,
    };
    match manifest::load(dir).map_err(io_err(&path))? {
        Loaded::Missing => {
            if !bases.is_empty() {
                tracing::info!(dir = %dir.display(), "log: stream has no manifest; taking its segments as found");
            }
            Ok(None)
        }
        Loaded::Damaged => Err(Corruption {
            path,
            position: 0,
            offset: 0,
            kind: CorruptionKind::BadManifest,
        }
        .into()),
        Loaded::Found(m) => match (bases.first(), bases.last()) {
            (Some(&first), _) if first > m.oldest => Err(missing(m.oldest).into()),
            (_, Some(&last)) if last < m.newest => Err(missing(m.newest).into()),
            (None, _) => Err(missing(m.oldest).into()),
            _ => Ok(Some(m)),
        },
    }
}

impl StreamShared {
    /// The last segment's file and its visible length (the end of its data; the writer may
    /// have written zeros past it).
    pub(crate) fn tail(&self) -> Option<(Arc<File>, u64)> {
        lock(&self.index)
            .segments
            .last()
            .map(|s| (Arc::clone(&s.file), s.len))
    }

    /// Opens (or creates) the stream in `dir`, recovering its tail.
    pub fn open(
        name: String,
        dir: PathBuf,
        patterns: Vec<Pattern>,
        recovery: Recovery,
    ) -> Result<Self, OpenError> {
        fs::create_dir_all(dir.join("groups")).map_err(io_err(&dir))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let fname = entry.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            let stem = fname.strip_suffix(".log").filter(|s| s.len() == 20);
            if let Some(base) = stem.and_then(|s| s.parse::<u64>().ok()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let recorded = check_manifest(&dir, &bases)?;
        let mut segments: Vec<Segment> = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base);
            if let Some(prev_end) = segments.last().map(Segment::end).filter(|&e| e != base) {
                return Err(Corruption {
                    path,
                    position: 0,
                    offset: prev_end,
                    kind: CorruptionKind::Gap,
                }
                .into());
            }
            let is_last = i + 1 == bases.len();
            let (file, positions, len) = scan_segment(&path, base, is_last, recovery)?;
            let modified = file
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            segments.push(Segment {
                base,
                path,
                file: Arc::new(file),
                positions,
                len,
                modified,
            });
        }
        if segments.is_empty() {
            segments.push(create_segment(&dir, 0, true).map_err(io_err(&dir))?);
        }
        let found = Manifest {
            oldest: segments.first().map_or(0, |s| s.base),
            newest: segments.last().map_or(0, |s| s.base),
        };
        if recorded != Some(found) {
            manifest::store(&dir, found).map_err(io_err(&manifest::path(&dir)))?;
        }
        let end = segments.last().map_or(0, Segment::end);
        let (committed, offsets_damaged) = clamp_committed(&name, &dir.join("groups"), end)?;
        Ok(Self {
            name,
            dir,
            patterns,
            index: Mutex::new(StreamIndex { segments }),
            committed: Mutex::new(committed),
            offsets_damaged,
        })
    }

    /// Reads up to `max` visible records starting at `from` (fewer if a segment ends first).
    /// Returns the records with their offsets; empty when `from` is at the end.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Envelope)>, ReadError> {
        let (file, path, first, start, end) = {
            let idx = lock(&self.index);
            let Some(seg_i) = idx.segments.iter().rposition(|s| s.base <= from) else {
                return Ok(Vec::new());
            };
            let seg = &idx.segments[seg_i];
            let i = (from - seg.base) as usize;
            if i >= seg.positions.len() || max == 0 {
                return Ok(Vec::new());
            }
            let j = (i + max).min(seg.positions.len());
            let start = u64::from(seg.positions[i]);
            let end = seg.positions.get(j).map_or(seg.len, |&p| u64::from(p));
            (seg.file.clone(), seg.path.clone(), from, start, end)
        };
        let mut buf = vec![0u8; (end - start) as usize];
        fsio::read_exact_at(&file, &mut buf, start).map_err(|source| ReadError::Io {
            path: path.clone(),
            source,
        })?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < buf.len() {
            let offset = first + out.len() as u64;
            let corrupt = |kind| Corruption {
                path: path.clone(),
                position: start + pos as u64,
                offset,
                kind,
            };
            match record::parse(&buf[pos..], Some(offset)) {
                Parsed::Record { total } => {
                    let env = record::decode(record::payload(&buf[pos..pos + total]))
                        .map_err(|_| corrupt(CorruptionKind::BadEncoding))?;
                    out.push((offset, env));
                    pos += total;
                }
                Parsed::Short => return Err(corrupt(CorruptionKind::Truncated).into()),
                Parsed::Bad(kind) => return Err(corrupt(kind).into()),
            }
        }
        Ok(out)
    }

    /// True when `topic` of some envelope could be in this stream given a subscription
    /// pattern (catch-all streams always could).
    pub fn may_hold(&self, pattern: &Pattern) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| patterns_overlap(p, pattern))
    }
}

/// True when some topic matches both patterns ([`Pattern::overlaps`]).
pub(crate) fn patterns_overlap(a: &Pattern, b: &Pattern) -> bool {
    a.overlaps(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn overlap_of_patterns() {
        assert!(patterns_overlap(&p("a.#"), &p("a.b.c")));
        assert!(patterns_overlap(&p("a.*"), &p("*.b")));
        assert!(patterns_overlap(&p("#"), &p("x")));
        assert!(patterns_overlap(&p("a.#"), &p("#.z")));
        assert!(!patterns_overlap(&p("a.*"), &p("b.#")));
        assert!(!patterns_overlap(&p("a.*"), &p("a")));
        assert!(patterns_overlap(&p("a.#"), &p("a")));
        assert!(!patterns_overlap(&p("#.x.#.y"), &p("#.x.#.z")));
        assert!(patterns_overlap(&p("#.x.#.y"), &p("*.*.#.x.y")));
    }

    /// The plain recursive definition (exponential with many `#`), for the property test.
    fn reference(a: &[&str], b: &[&str]) -> bool {
        match (a.first(), b.first()) {
            (None, None) => true,
            (Some(&"#"), _) => reference(&a[1..], b) || (!b.is_empty() && reference(a, &b[1..])),
            (_, Some(&"#")) => reference(a, &b[1..]) || (!a.is_empty() && reference(&a[1..], b)),
            (None, _) | (_, None) => false,
            (Some(x), Some(y)) => (*x == "*" || *y == "*" || x == y) && reference(&a[1..], &b[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        fn overlap_agrees_with_the_recursive_definition(
            a in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "*", "#"]), 1..8),
            b in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "*", "#"]), 1..8),
        ) {
            proptest::prop_assert_eq!(
                patterns_overlap(&p(&a.join(".")), &p(&b.join("."))),
                reference(&a, &b)
            );
        }
    }

    /// A subscription pattern with many `#` against a stream pattern with several: this took
    /// exponential time under the subscribe lock (the same defect as issue 13 item 6).
    #[test]
    fn overlap_of_many_hashes_finishes() {
        let stream = p("#.x.#.x.#.x.#.x.#.y");
        let mut segs = vec!["#"; 100];
        segs.push("z");
        let sub = p(&segs.join("."));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(patterns_overlap(&stream, &sub));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("overlap did not finish within 5 s");
        assert!(!got);
    }
}
