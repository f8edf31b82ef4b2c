//! The stream manifest: the base offsets of the oldest and the newest segment, so that a
//! segment file that disappears at either end of a stream is noticed on open (a missing
//! segment in the middle already shows as a gap between its neighbours).
//!
//! File `MANIFEST` in the stream directory, replaced atomically (temp file, rename):
//! `[magic "SWYMAN01"][oldest base: u64 LE][newest base: u64 LE][crc32c of the 24 bytes
//! before: u32 LE]`.
//!
//! Ordering keeps the manifest a promise the files always keep, whatever the crash:
//! - a new segment file is created (and synced) before the manifest names it as newest;
//! - the manifest names a new oldest segment before retention deletes older files.
//!
//! So on open every segment from `oldest` to `newest` must exist; files older than `oldest`
//! (a retention interrupted between the two steps) or newer than `newest` (a roll
//! interrupted likewise) are taken as found, and the manifest is rewritten to match.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::fsio;

const MAGIC: &[u8; 8] = b"SWYMAN01";
const LEN: usize = 8 + 8 + 8 + 4;

/// The segments a stream must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// Base offset of the oldest segment.
    pub oldest: u64,
    /// Base offset of the newest segment.
    pub newest: u64,
}

/// What was found on disk.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// No manifest (a new stream, or a log written before manifests existed).
    Missing,
    /// A manifest that fails its checksum or has the wrong size.
    Damaged,
    /// A good manifest.
    Found(Manifest),
}

/// The manifest file of the stream in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join("MANIFEST")
}

/// Reads the manifest of the stream in `dir`.
pub(crate) fn load(dir: &Path) -> std::io::Result<Loaded> {
    let buf = match fs::read(path(dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    Ok(parse(&buf).map_or(Loaded::Damaged, Loaded::Found))
}

fn parse(buf: &[u8]) -> Option<Manifest> {
    if buf.len() != LEN || &buf[..8] != MAGIC {
        return None;
    }
    let u64_at = |i: usize| buf.get(i..i + 8)?.try_into().ok().map(u64::from_le_bytes);
    let crc: [u8; 4] = buf.get(24..28)?.try_into().ok()?;
    if crc32c::crc32c(&buf[..24]) != u32::from_le_bytes(crc) {
        return None;
    }
    let m = Manifest {
        oldest: u64_at(8)?,
        newest: u64_at(16)?,
    };
    (m.oldest <= m.newest).then_some(m)
}

/// Writes the manifest of the stream in `dir` durably (file and directory), whatever the
/// durability mode: it is written once per segment, and syncing the directory also makes
/// the entry of a segment just created durable, so the manifest never names a file a
/// power loss could take back.
pub(crate) fn store(dir: &Path, m: Manifest) -> std::io::Result<()> {
    let mut buf = [0u8; LEN];
    buf[..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&m.oldest.to_le_bytes());
    buf[16..24].copy_from_slice(&m.newest.to_le_bytes());
    let crc = crc32c::crc32c(&buf[..24]);
    buf[24..].copy_from_slice(&crc.to_le_bytes());
    let target = path(dir);
    let tmp = dir.join("MANIFEST.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_data()?;
    drop(f);
    fs::rename(&tmp, &target)?;
    fsio::sync_dir(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()).unwrap(), Loaded::Missing));
        let m = Manifest {
            oldest: 7,
            newest: 1 << 40,
        };
        store(dir.path(), m).unwrap();
        assert!(matches!(load(dir.path()).unwrap(), Loaded::Found(x) if x == m));
        let mut bytes = fs::read(path(dir.path())).unwrap();
        bytes[12] ^= 1;
        fs::write(path(dir.path()), &bytes).unwrap();
        assert!(matches!(load(dir.path()).unwrap(), Loaded::Damaged));
    }
}
