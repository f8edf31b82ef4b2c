//! The on-disk record frame and the envelope codec.
//!
//! A segment file starts with the 8-byte [`MAGIC`], then records back to back:
//!
//! ```text
//! [len: u32 LE][crc: u32 LE][offset: u64 LE][payload: len bytes]
//! crc = CRC32C(len bytes ++ offset bytes ++ payload)
//! ```
//!
//! The payload is the envelope encoded as MessagePack (`rmp-serde`, structs as arrays):
//! compact and binary (the payload is stored as raw bytes, not as a JSON array of numbers),
//! and, unlike `postcard`/`bincode`, it can encode the envelope's header map, whose serde
//! impl does not announce its length up front.

use switchyard_core::Envelope;

use crate::error::CorruptionKind;

/// First bytes of every segment file (format version 1).
pub(crate) const MAGIC: &[u8; 8] = b"SWYLOG01";
/// Bytes before the payload of each record.
pub(crate) const HEADER: usize = 16;

fn checksum(len: u32, offset: u64, payload: &[u8]) -> u32 {
    let mut covered = [0u8; 12];
    covered[..4].copy_from_slice(&len.to_le_bytes());
    covered[4..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&covered), payload)
}

/// Appends one framed record to `out`.
pub(crate) fn frame(offset: u64, payload: &[u8], out: &mut Vec<u8>) {
    // Callers check the payload against `max_record_bytes` (a u32) before framing.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&checksum(len, offset, payload).to_le_bytes());
    header[8..].copy_from_slice(&offset.to_le_bytes());
    out.reserve(HEADER + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// Result of parsing one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A good record of `total` bytes (header included).
    Record { total: usize },
    /// The buffer ends inside the record.
    Short,
    /// The record is damaged.
    Bad(CorruptionKind),
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = buf.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// Parses the record starting at `buf[0]`, which must carry `expected` as its offset (any
/// offset when `expected` is `None`).
pub(crate) fn parse(buf: &[u8], expected: Option<u64>, max_len: u32) -> Parsed {
    let (Some(len), Some(crc), Some(offset)) = (u32_at(buf, 0), u32_at(buf, 4), u64_at(buf, 8))
    else {
        return Parsed::Short;
    };
    if len == 0 || len > max_len {
        return Parsed::Bad(CorruptionKind::BadLength);
    }
    let total = HEADER + len as usize;
    let Some(payload) = buf.get(HEADER..total) else {
        return Parsed::Short;
    };
    if checksum(len, offset, payload) != crc {
        return Parsed::Bad(CorruptionKind::BadChecksum);
    }
    if expected.is_some_and(|e| e != offset) {
        return Parsed::Bad(CorruptionKind::BadOffset);
    }
    Parsed::Record { total }
}

/// The payload of a record already checked by [`parse`].
pub(crate) fn payload(record: &[u8]) -> &[u8] {
    record.get(HEADER..).unwrap_or(&[])
}

/// The offset stored in a record header.
pub(crate) fn offset_of(record: &[u8]) -> Option<u64> {
    u64_at(record, 8)
}

/// Encodes an envelope for storage.
#[cfg(test)]
pub(crate) fn encode(env: &Envelope) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec(env)
}

/// Appends the stored encoding of an envelope to `out` (the same bytes as `encode`), so one
/// buffer holds a whole batch.
pub(crate) fn encode_into(
    env: &Envelope,
    out: &mut Vec<u8>,
) -> Result<(), rmp_serde::encode::Error> {
    rmp_serde::encode::write(out, env)
}

/// Decodes a stored envelope.
pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use switchyard_core::Topic;

    #[test]
    fn frame_roundtrip_and_damage() {
        let env =
            Envelope::new(Topic::new("a.b").unwrap(), vec![0u8, 1, 255]).with_header("k", "v");
        let payload = encode(&env).unwrap();
        let mut into = vec![9u8];
        encode_into(&env, &mut into).unwrap();
        assert_eq!(&into[1..], &payload[..]);
        let mut buf = Vec::new();
        frame(7, &payload, &mut buf);
        assert_eq!(
            parse(&buf, Some(7), 1 << 20),
            Parsed::Record { total: buf.len() }
        );
        assert_eq!(
            parse(&buf, Some(8), 1 << 20),
            Parsed::Bad(CorruptionKind::BadOffset)
        );
        assert_eq!(
            parse(&buf[..buf.len() - 1], Some(7), 1 << 20),
            Parsed::Short
        );
        assert_eq!(decode(payload_of(&buf)).unwrap(), env);
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert_eq!(
            parse(&bad, Some(7), 1 << 20),
            Parsed::Bad(CorruptionKind::BadChecksum)
        );
    }

    #[test]
    fn checksum_covers_len_offset_payload_in_order() {
        let (len, offset, payload) = (3u32, 0x0102_0304_0506_0708u64, [9u8, 8, 7]);
        let mut all = Vec::new();
        all.extend_from_slice(&len.to_le_bytes());
        all.extend_from_slice(&offset.to_le_bytes());
        all.extend_from_slice(&payload);
        assert_eq!(checksum(len, offset, &payload), crc32c::crc32c(&all));
    }

    fn payload_of(buf: &[u8]) -> &[u8] {
        payload(buf)
    }
}
