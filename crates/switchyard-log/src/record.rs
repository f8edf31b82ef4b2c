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

use switchyard_core::{DeliveryInfo, Envelope};

use crate::error::CorruptionKind;

/// First bytes of every segment file (format version 1).
pub(crate) const MAGIC: &[u8; 8] = b"SWYLOG01";
/// Bytes before the payload of each record.
pub(crate) const HEADER: usize = 16;

/// The longest record the format holds: the highest `max_record_bytes` a log can be
/// configured with. Reading and recovery check stored records against this, not against the
/// configured limit, which applies to publishes: a log reopened with a lower limit still
/// reads the records written under a higher one.
pub(crate) const MAX_LEN: u32 = u32::MAX / 4;

fn checksum(len: u32, offset: u64, payload: &[u8]) -> u32 {
    let mut covered = [0u8; 12];
    covered[..4].copy_from_slice(&len.to_le_bytes());
    covered[4..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&covered), payload)
}

/// The CRC of a record's 4 length bytes, which every checksum starts with, kept for the next
/// record of the same length (the records of a batch often all have one size).
#[derive(Debug, Default)]
pub(crate) struct LenCrc(Option<(u32, u32)>);

impl LenCrc {
    fn of(&mut self, len: u32) -> u32 {
        match self.0 {
            Some((l, crc)) if l == len => crc,
            _ => {
                let crc = crc32c::crc32c(&len.to_le_bytes());
                self.0 = Some((len, crc));
                crc
            }
        }
    }
}

/// Appends one framed record to `out`, in one pass: the header and payload are copied in,
/// then one CRC call covers the offset and payload where they now lie side by side, seeded
/// with the CRC of the length (`seed`): the same checksum as [`checksum`].
pub(crate) fn frame(offset: u64, payload: &[u8], out: &mut Vec<u8>, seed: &mut LenCrc) {
    // Callers check the payload against `max_record_bytes` (a u32) before framing.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let (l, o) = (len.to_le_bytes(), offset.to_le_bytes());
    let at = out.len();
    out.reserve(HEADER + payload.len());
    out.extend_from_slice(&[
        l[0], l[1], l[2], l[3], 0, 0, 0, 0, o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7],
    ]);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c_append(seed.of(len), out.get(at + 8..).unwrap_or(&[]));
    if let Some(c) = out.get_mut(at + 4..at + 8) {
        c.copy_from_slice(&crc.to_le_bytes());
    }
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
/// offset when `expected` is `None`). Its length is checked against [`MAX_LEN`].
pub(crate) fn parse(buf: &[u8], expected: Option<u64>) -> Parsed {
    let (Some(len), Some(crc), Some(offset)) = (u32_at(buf, 0), u32_at(buf, 4), u64_at(buf, 8))
    else {
        return Parsed::Short;
    };
    if len == 0 || len > MAX_LEN {
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
///
/// The bytes are what `rmp_serde` writes for the envelope's serde form (structs as arrays),
/// written here directly: through the generic serializer an envelope cost ~1,400
/// instructions, a third of a publish's CPU with 256 in flight, spent mostly on one small
/// write call per field. `decode` still reads them with `rmp_serde`;
/// `tests::hand_encoding_is_byte_for_byte_rmp_serde` holds the two together over arbitrary
/// envelopes, and `tests::records_are_byte_for_byte_the_earlier_format` both to fixed bytes.
/// A timestamp before 1970 (which serde refuses) goes through `rmp_serde` for its error.
pub(crate) fn encode_into(
    env: &Envelope,
    out: &mut Vec<u8>,
) -> Result<(), rmp_serde::encode::Error> {
    let start = out.len();
    if encode_fast(env, out).is_none() {
        out.truncate(start);
        rmp_serde::encode::write(out, env)?;
    }
    Ok(())
}

/// The hand-written encoding; `None` where it defers to `rmp_serde`.
///
/// Written for the usual envelope (ULID ids, short strings, small numbers): those fields take
/// one capacity check and one store each, the ids are spelled in Crockford base32 straight
/// from their 128 bits, and only the rare forms (long strings, foreign ids) go through the
/// general markers out of line.
fn encode_fast(env: &Envelope, out: &mut Vec<u8>) -> Option<()> {
    let Envelope {
        id,
        topic,
        kind,
        correlation_id,
        priority,
        timestamp,
        type_name,
        type_version,
        payload,
        delivery,
        // The in-process typed value: `#[serde(skip)]`, never stored.
        local: _,
        // The rare fields, private: read below through their methods.
        ..
    } = env;
    let (causation_id, source, target) = (env.causation_id(), env.source(), env.target());
    let (headers, content_type) = (env.headers(), env.content_type());
    let DeliveryInfo {
        attempt,
        first_delivered_at,
        // The sender's deadline, an instant of this process: `#[serde(skip)]`, never stored.
        deadline: _,
    } = delivery;
    // Before anything is written: a time before 1970 defers to `rmp_serde` (for its error).
    let timestamp = mp::since_epoch(*timestamp)?;
    let first_delivered_at = match first_delivered_at {
        Some(t) => Some(mp::since_epoch(*t)?),
        None => None,
    };
    let headers_len: usize = if headers.is_empty() {
        0
    } else {
        headers.iter().map(|(k, v)| k.len() + v.len() + 10).sum()
    };
    let topic = topic.as_str();
    out.reserve(
        // Ids, kind, numbers, times and markers take under 200 bytes.
        200 + topic.len() + headers_len + content_type.len() + payload.len(),
    );
    // A fixarray of 15, then the id.
    out.push(0x9f);
    let id_spelled = mp::id(out, id);
    mp::str(out, topic);
    mp::str(out, kind.as_str());
    match id_spelled {
        // Most messages start their own correlation: the id's bytes again.
        Some(at) if correlation_id == id => out.extend_from_within(at..at + 27),
        _ => {
            mp::id(out, correlation_id);
        }
    }
    match causation_id {
        Some(c) => {
            mp::id(out, c);
        }
        None => mp::nil(out),
    }
    mp::opt_str(out, source);
    mp::opt_str(out, target);
    mp::uint(out, u64::from(priority.0));
    mp::time(out, timestamp);
    mp::map_len(out, headers.len());
    for (k, v) in headers.iter() {
        mp::str(out, k);
        mp::str(out, v);
    }
    mp::str(out, content_type);
    mp::opt_str(out, type_name.as_deref());
    mp::uint(out, u64::from(*type_version));
    mp::bin(out, payload);
    // The delivery info: a fixarray of 2.
    out.push(0x92);
    mp::uint(out, u64::from(*attempt));
    match first_delivered_at {
        Some(t) => mp::time(out, t),
        None => mp::nil(out),
    }
    Some(())
}

/// MessagePack markers, each in the smallest form (as `rmp` writes them).
mod mp {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use switchyard_core::MessageId;

    /// Crockford's base32, as ULIDs are spelled.
    const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

    #[inline]
    pub fn nil(out: &mut Vec<u8>) {
        out.push(0xc0);
    }

    /// Every pair of Crockford characters, by the 10 bits they spell.
    static PAIRS: [[u8; 2]; 1024] = {
        let mut t = [[0u8; 2]; 1024];
        let mut i = 0;
        while i < 1024 {
            t[i] = [CROCKFORD[i >> 5], CROCKFORD[i & 31]];
            i += 1;
        }
        t
    };

    /// The 12 characters of a 60-bit group, most significant first, two at a time.
    #[inline(always)]
    fn sixty_bits(v: u64, chars: &mut [u8]) {
        for (i, pair) in chars.chunks_exact_mut(2).take(6).enumerate() {
            let bits = (v >> (50 - 10 * i)) & 1023;
            pair.copy_from_slice(&PAIRS[bits as usize]);
        }
    }

    /// Spells a ULID (as `Ulid::array_to_str` does) into `s` (27 bytes), behind its fixstr
    /// marker: the top 8 bits, then two groups of 60.
    #[inline(always)]
    pub fn ulid(v: u128, s: &mut [u8]) {
        const LOW60: u128 = (1 << 60) - 1;
        let [a, b] = PAIRS[(v >> 120) as usize & 1023];
        if let Some(head) = s.get_mut(..3) {
            head.copy_from_slice(&[0xa0 | 26, a, b]);
        }
        if let Some(mid) = s.get_mut(3..15) {
            sixty_bits(((v >> 60) & LOW60) as u64, mid);
        }
        if let Some(low) = s.get_mut(15..27) {
            sixty_bits((v & LOW60) as u64, low);
        }
    }

    /// Writes an id as its string; gives back where its bytes start when it is a ULID.
    #[inline(always)]
    pub fn id(out: &mut Vec<u8>, id: &MessageId) -> Option<usize> {
        match id.as_u128() {
            Some(v) => {
                let at = out.len();
                out.extend_from_slice(&[0; 27]);
                ulid(v, out.get_mut(at..).unwrap_or_default());
                Some(at)
            }
            None => {
                id.with_str(|s| str(out, s));
                None
            }
        }
    }

    /// `len` must fit in a u32 (callers check record sizes against a u32 limit).
    #[cold]
    #[inline(never)]
    fn long_marker(out: &mut Vec<u8>, len: usize, m8: Option<u8>, m16: u8, m32: u8) {
        match (m8, len) {
            (Some(m), 0..=0xff) => out.extend_from_slice(&[m, len as u8]),
            (_, 0..=0xffff) => {
                out.push(m16);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(m32);
                out.extend_from_slice(&(len as u32).to_be_bytes());
            }
        }
    }

    #[inline]
    pub fn map_len(out: &mut Vec<u8>, len: usize) {
        if len < 16 {
            out.push(0x80 | len as u8);
        } else {
            long_marker(out, len, None, 0xde, 0xdf);
        }
    }

    #[inline]
    pub fn str(out: &mut Vec<u8>, s: &str) {
        let len = s.len();
        if len < 32 {
            out.push(0xa0 | len as u8);
        } else {
            long_marker(out, len, Some(0xd9), 0xda, 0xdb);
        }
        out.extend_from_slice(s.as_bytes());
    }

    #[inline]
    pub fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => str(out, s),
            None => nil(out),
        }
    }

    #[inline]
    pub fn bin(out: &mut Vec<u8>, b: &[u8]) {
        let len = b.len();
        if len < 256 {
            out.extend_from_slice(&[0xc4, len as u8]);
        } else {
            long_marker(out, len, None, 0xc5, 0xc6);
        }
        out.extend_from_slice(b);
    }

    #[inline]
    pub fn uint(out: &mut Vec<u8>, v: u64) {
        if v < 0x80 {
            out.push(v as u8);
        } else {
            uint_long(out, v);
        }
    }

    #[inline(always)]
    fn uint_long(out: &mut Vec<u8>, v: u64) {
        match v {
            0..=0xff => out.extend_from_slice(&[0xcc, v as u8]),
            0x100..=0xffff => {
                let b = (v as u16).to_be_bytes();
                out.extend_from_slice(&[0xcd, b[0], b[1]]);
            }
            0x1_0000..=0xffff_ffff => {
                let b = (v as u32).to_be_bytes();
                out.extend_from_slice(&[0xce, b[0], b[1], b[2], b[3]]);
            }
            _ => {
                out.push(0xcf);
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// `t` as serde's `SystemTime` reads it; `None` before the epoch (which serde refuses).
    #[inline]
    pub fn since_epoch(t: SystemTime) -> Option<Duration> {
        t.duration_since(UNIX_EPOCH).ok()
    }

    /// serde's form of a `SystemTime`: `[secs_since_epoch, nanos_since_epoch]`; with both
    /// numbers in the 4-byte form (every time from 1970-01-01T18:12:16 to 2106 but those in
    /// the first 65,536 ns of a second) as one write.
    #[inline]
    pub fn time(out: &mut Vec<u8>, d: Duration) {
        let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
        match u32::try_from(secs) {
            Ok(s) if s > 0xffff && nanos > 0xffff => {
                let (s, n) = (s.to_be_bytes(), nanos.to_be_bytes());
                out.extend_from_slice(&[
                    0x92, 0xce, s[0], s[1], s[2], s[3], 0xce, n[0], n[1], n[2], n[3],
                ]);
            }
            _ => {
                out.push(0x92);
                uint(out, secs);
                uint(out, u64::from(nanos));
            }
        }
    }
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
        frame(7, &payload, &mut buf, &mut LenCrc::default());
        assert_eq!(parse(&buf, Some(7)), Parsed::Record { total: buf.len() });
        assert_eq!(parse(&buf, Some(8)), Parsed::Bad(CorruptionKind::BadOffset));
        assert_eq!(parse(&buf[..buf.len() - 1], Some(7)), Parsed::Short);
        assert_eq!(decode(payload_of(&buf)).unwrap(), env);
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert_eq!(
            parse(&bad, Some(7)),
            Parsed::Bad(CorruptionKind::BadChecksum)
        );
    }

    #[test]
    fn one_len_crc_frames_records_of_different_lengths_right() {
        let mut seed = LenCrc::default();
        let mut buf = Vec::new();
        for (offset, payload) in [
            (3u64, &b"abc"[..]),
            (4, b"xyz"),
            (5, b"longer one"),
            (6, b"q"),
        ] {
            let at = buf.len();
            frame(offset, payload, &mut buf, &mut seed);
            // The header as the format defines it (the earlier two-call checksum).
            let len = payload.len() as u32;
            let crc = checksum(len, offset, payload);
            assert_eq!(buf[at..at + 4], len.to_le_bytes());
            assert_eq!(buf[at + 4..at + 8], crc.to_le_bytes());
            assert_eq!(buf[at + 8..at + 16], offset.to_le_bytes());
            assert_eq!(
                parse(&buf[at..], Some(offset)),
                Parsed::Record {
                    total: HEADER + payload.len()
                }
            );
        }
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

    mod hand {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};

        use proptest::prelude::*;
        use switchyard_core::{Kind, MessageId, Priority, Topic};

        use super::super::*;

        /// Strings around every MessagePack length boundary (31/32, 255/256).
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z]{0,3}",
                "[a-zA-Z0-9 éß]{28,36}",
                "[a-z]{250,260}",
                "[a-z]{0,40}",
            ]
        }

        fn id() -> impl Strategy<Value = MessageId> {
            prop_oneof![
                Just(()).prop_map(|()| MessageId::new()),
                "[a-z0-9-]{1,40}".prop_map(|s| MessageId::parse_opaque(&s).unwrap()),
            ]
        }

        fn time() -> impl Strategy<Value = SystemTime> {
            (
                prop_oneof![
                    0u64..200,
                    0u64..70_000,
                    0u64..5_000_000_000,
                    any::<u32>().prop_map(u64::from)
                ],
                0u32..1_000_000_000,
            )
                .prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n))
        }

        fn kind() -> impl Strategy<Value = Kind> {
            prop_oneof![
                Just(Kind::Event),
                Just(Kind::Command),
                Just(Kind::Request),
                Just(Kind::Reply)
            ]
        }

        fn envelope() -> impl Strategy<Value = Envelope> {
            (
                (
                    id(),
                    "[a-z]{1,8}(\\.[a-z0-9_]{1,12}){0,4}",
                    kind(),
                    prop::option::of(id()),
                    prop::option::of(id()),
                    prop::option::of(text()),
                    prop::option::of(text()),
                    any::<u8>(),
                ),
                (
                    time(),
                    prop::collection::btree_map(text(), text(), 0..20),
                    text(),
                    prop::option::of(text()),
                    prop_oneof![0u32..200, any::<u32>()],
                    prop_oneof![
                        prop::collection::vec(any::<u8>(), 0..300),
                        prop::collection::vec(any::<u8>(), 65_530..65_540),
                    ],
                    prop_oneof![0u32..3, any::<u32>()],
                    prop::option::of(time()),
                ),
            )
                .prop_map(
                    |(
                        (id, topic, kind, correlation, causation, source, target, priority),
                        (
                            timestamp,
                            headers,
                            content_type,
                            type_name,
                            version,
                            payload,
                            attempt,
                            first,
                        ),
                    )| {
                        let mut env = Envelope::new(Topic::new(&topic).unwrap(), payload);
                        env.correlation_id = correlation.unwrap_or_else(|| id.clone());
                        env.id = id;
                        env.kind = kind;
                        env.set_causation_id(causation);
                        env.set_source(source.map(Into::into));
                        env.set_target(target.map(Into::into));
                        env.priority = Priority(priority);
                        env.timestamp = timestamp;
                        for (k, v) in headers {
                            env.headers_mut().insert(k, v);
                        }
                        env.set_content_type(content_type);
                        env.type_name = type_name.map(Into::into);
                        env.type_version = version;
                        env.delivery.attempt = attempt;
                        env.delivery.first_delivered_at = first;
                        env
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            #[test]
            fn hand_encoding_is_byte_for_byte_rmp_serde(env in envelope()) {
                let mut out = vec![0xee];
                encode_into(&env, &mut out).unwrap();
                prop_assert_eq!(&out[1..], &rmp_serde::to_vec(&env).unwrap()[..]);
                prop_assert!(encode_fast(&env, &mut Vec::new()).is_some(), "took the fast path");
                prop_assert_eq!(decode(&out[1..]).unwrap(), env);
            }
        }

        /// Records written before the envelope's rare fields moved behind a box (bytes from
        /// `rmp_serde` at that commit): both encodings still write them, and they read back.
        #[test]
        fn records_are_byte_for_byte_the_earlier_format() {
            const FULL: &str = "9fba30314a38543543593454514b46463034484d415357394e463659ad6f72646572732e706c61636564a7636f6d6d616e64a7636f72722d3432ba3030303030303030303030303030303030303030303030303037a762696c6c696e67b07368697070696e672d73657276696365ccc092ce6ab13b80ce075bcd1582a674656e616e74a461636d65a7782d7472616365a930302d6162632d3031b36170706c69636174696f6e2f6d73677061636ba6506c6163656403c4077b226e223a377d920292ce6ab13b8105";
            const MINIMAL: &str = "9fba3030303030303030303030303030303030303030303030303031a3612e62a56576656e74ba3030303030303030303030303030303030303030303030303031c0c0c0cc8092ce6ab13b800080b06170706c69636174696f6e2f6a736f6ec001c401789200c0";
            let at = |s, n| UNIX_EPOCH + Duration::new(s, n);
            let mut full = Envelope::new(Topic::new("orders.placed").unwrap(), &b"{\"n\":7}"[..])
                .with_kind(Kind::Command)
                .with_priority(Priority::HIGH)
                .with_source("billing")
                .with_target("shipping-service")
                .with_header("tenant", "acme")
                .with_header("x-trace", "00-abc-01")
                .with_content_type("application/msgpack")
                .with_correlation_id(MessageId::parse_opaque("corr-42").unwrap());
            full.id = MessageId::from_u128(0x0192_3456_789a_bcde_f012_3456_789a_bcde);
            full.set_causation_id(Some(MessageId::from_u128(7)));
            (full.timestamp, full.type_name) =
                (at(1_790_000_000, 123_456_789), Some("Placed".into()));
            (full.type_version, full.delivery.attempt) = (3, 2);
            full.delivery.first_delivered_at = Some(at(1_790_000_001, 5));
            let mut minimal = Envelope::new(Topic::new("a.b").unwrap(), &b"x"[..]);
            (minimal.id, minimal.correlation_id) =
                (MessageId::from_u128(1), MessageId::from_u128(1));
            minimal.timestamp = at(1_790_000_000, 0);
            for (env, hex) in [(full, FULL), (minimal, MINIMAL)] {
                let mut fast = Vec::new();
                encode_into(&env, &mut fast).unwrap();
                let hex_of = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
                assert_eq!(hex_of(&fast), hex);
                assert_eq!(hex_of(&rmp_serde::to_vec(&env).unwrap()), hex);
                assert_eq!(decode(&fast).unwrap(), env);
            }
        }

        proptest! {
            #[test]
            fn ulids_are_spelled_as_the_ulid_crate_spells_them(
                v in prop_oneof![Just(0u128), Just(u128::MAX), any::<u128>()]
            ) {
                let mut spelled = [0u8; 27];
                mp::ulid(v, &mut spelled);
                prop_assert_eq!(spelled[0], 0xa0 | 26);
                MessageId::from_u128(v).with_str(|s| {
                    prop_assert_eq!(&spelled[1..], s.as_bytes());
                    Ok(())
                })?;
            }
        }

        #[test]
        fn a_timestamp_before_1970_is_refused_as_serde_refuses_it() {
            let mut env = Envelope::new(Topic::new("a").unwrap(), "x");
            env.timestamp = UNIX_EPOCH - Duration::from_secs(1);
            let mut out = vec![1, 2];
            assert!(encode_into(&env, &mut out).is_err());
            assert!(rmp_serde::to_vec(&env).is_err());
        }
    }
}
