//! Issue 19, item 6: payload encryption. On a bus with a transport (the embedded log here;
//! NATS in switchyard-nats' tests) payloads of encrypted topics are ciphertext at rest and
//! plaintext for handlers; keys rotate; a wrong or missing key dead-letters the message as it
//! arrived.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{
    Bus, DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, Message, Publisher, Topic,
};
use switchyard_contracts::{Encryption, EncryptionError, KEY_HEADER, Keyring};
use switchyard_log::{LogConfig, LogTransport};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
const MARKER: &str = "MARKER-4111-1111-1111-1111";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CardCharged {
    card: String,
    cents: u64,
}
impl Message for CardCharged {
    const TOPIC: &'static str = "payments.charged";
}

fn charge(n: u64) -> CardCharged {
    CardCharged {
        card: MARKER.to_owned(),
        cents: n,
    }
}

fn keys(list: &[(&str, u8)]) -> Keyring {
    list.iter().fold(Keyring::new(), |ring, (id, byte)| {
        ring.with_key(id, &[*byte; 32]).unwrap()
    })
}

fn encryption(ring: Keyring) -> Encryption {
    Encryption::new(ring).unwrap().topic("payments.#").unwrap()
}

struct Letters(mpsc::UnboundedSender<DeadLetter>);
impl DeadLetterSink for Letters {
    fn put(&self, letter: DeadLetter) {
        let _ = self.0.send(letter);
    }
}

fn open_log(dir: &Path) -> LogTransport {
    LogTransport::open(LogConfig::new(dir)).unwrap()
}

/// A bus on `log` (with `enc` as its codec, if any) and a typed handler whose messages come
/// out of the receiver.
async fn typed_bus(
    log: LogTransport,
    enc: Option<Encryption>,
    group: &str,
) -> (
    Bus,
    switchyard::Subscription,
    mpsc::UnboundedReceiver<CardCharged>,
    mpsc::UnboundedReceiver<DeadLetter>,
) {
    let (dtx, drx) = mpsc::unbounded_channel();
    let mut b = Bus::builder().transport(log).dead_letters(Letters(dtx));
    if let Some(enc) = enc {
        b = b.transport_codec(enc);
    }
    let bus = b.build().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on(group, move |c: CardCharged, _ctx| {
            let tx = tx.clone();
            async move { tx.send(c).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    (bus, sub, rx, drx)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out")
        .expect("channel closed")
}

/// Every stored record of the stream holding `payments.charged`.
fn stored(log: &LogTransport) -> Vec<Envelope> {
    let stream = log
        .stream_for(&Topic::new(CardCharged::TOPIC).unwrap())
        .unwrap()
        .to_owned();
    log.read_range(&stream, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|r| r.envelope)
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether any file under `dir` contains `needle`, and how many files were read.
fn grep_files(dir: &Path, needle: &[u8]) -> (bool, usize) {
    let mut found = false;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let (f, n) = grep_files(&entry.path(), needle);
            found |= f;
            files += n;
        } else {
            files += 1;
            found |= contains(&std::fs::read(entry.path()).unwrap(), needle);
        }
    }
    (found, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_handler_gets_the_decrypted_value_of_an_encrypted_topic() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, sub, mut rx, _letters) = typed_bus(
        open_log(dir.path()),
        Some(encryption(keys(&[("k1", 1)]))),
        "billing",
    )
    .await;
    bus.publish(charge(1250)).await.unwrap();
    assert_eq!(next(&mut rx).await, charge(1250));
    assert_eq!(sub.stats().decode_failed, 0);
    bus.shutdown(WAIT).await.unwrap();
}

/// Publishes a payload with the marker on a log-backed bus, with or without encryption, and
/// greps every file under the log directory for it.
async fn marker_on_disk(encrypted: bool) -> (bool, usize) {
    let dir = tempfile::tempdir().unwrap();
    let enc = encrypted.then(|| encryption(keys(&[("k1", 1)])));
    let (bus, _sub, mut rx, _letters) = typed_bus(open_log(dir.path()), enc, "billing").await;
    bus.publish(charge(7)).await.unwrap();
    // Handled (so it went through the log and came back), then closed (so it is on disk).
    assert_eq!(next(&mut rx).await, charge(7));
    bus.shutdown(WAIT).await.unwrap();
    grep_files(dir.path(), MARKER.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_segment_files_hold_ciphertext_only_when_the_topic_is_encrypted() {
    let (found, files) = marker_on_disk(false).await;
    assert!(files > 0);
    assert!(
        found,
        "without encryption the marker is on disk (the grep works)"
    );
    let (found, files) = marker_on_disk(true).await;
    assert!(files > 0);
    assert!(
        !found,
        "with encryption the plaintext marker is nowhere on disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rotation_old_messages_still_decrypt_and_new_ones_use_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    // Before the rotation: k1 is the only key; a message is written and not yet consumed.
    let bus = Bus::builder()
        .transport(open_log(dir.path()))
        .transport_codec(encryption(keys(&[("k1", 1)])))
        .build()
        .unwrap();
    bus.publish(charge(1)).await.unwrap();
    bus.shutdown(WAIT).await.unwrap();

    // After: k2 is added and active, k1 kept to decrypt.
    let log = open_log(dir.path());
    let ring = keys(&[("k1", 1), ("k2", 2)]);
    assert_eq!(ring.active_id(), Some("k2"));
    let (bus, sub, mut rx, _letters) =
        typed_bus(log.clone(), Some(encryption(ring)), "billing").await;
    assert_eq!(next(&mut rx).await, charge(1), "the k1 message decrypts");
    bus.publish(charge(2)).await.unwrap();
    assert_eq!(next(&mut rx).await, charge(2));
    assert_eq!(sub.stats().decode_failed, 0);

    let at_rest = stored(&log);
    let ids: Vec<Option<&str>> = at_rest.iter().map(|e| e.header(KEY_HEADER)).collect();
    assert_eq!(ids, [Some("k1"), Some("k2")]);
    assert!(
        at_rest
            .iter()
            .all(|e| !contains(&e.payload, MARKER.as_bytes()))
    );
    bus.shutdown(WAIT).await.unwrap();

    // Once k1 is retired (dropped from the keyring), its message no longer decrypts.
    let ring = keys(&[("k2", 2)]);
    let (bus, _sub, mut rx, mut letters) =
        typed_bus(open_log(dir.path()), Some(encryption(ring)), "audit").await;
    let letter = next(&mut letters).await;
    assert_eq!(letter.envelope.header(KEY_HEADER), Some("k1"));
    assert_eq!(next(&mut rx).await, charge(2));
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_key_dead_letters_the_raw_message_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    // Written by other processes: one with another key under the reader's id, one with a key
    // the reader does not have, one in plaintext, and one the reader can open.
    let sealed = |ring: Keyring, n: u64| {
        let mut env = charge(n).to_envelope().unwrap();
        encryption(ring).seal(&mut env).unwrap();
        env
    };
    let wrong = sealed(keys(&[("k1", 66)]), 1);
    let missing = sealed(keys(&[("k9", 9)]), 2);
    let plain = charge(3).to_envelope().unwrap();
    let good = sealed(keys(&[("k1", 1)]), 4);
    log.publish(vec![wrong.clone(), missing.clone(), plain.clone(), good])
        .await
        .unwrap();

    let (bus, sub, mut rx, mut letters) =
        typed_bus(log.clone(), Some(encryption(keys(&[("k1", 1)]))), "billing").await;
    assert_eq!(next(&mut rx).await, charge(4));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut letters).await);
    }
    got.sort_by_key(|l| l.envelope.id.clone());
    let mut expected = [&wrong, &missing, &plain];
    expected.sort_by_key(|e| e.id.clone());
    for (letter, raw) in got.iter().zip(expected) {
        assert_eq!(letter.reason, DeadLetterReason::DecodeFailed);
        assert_eq!(letter.handler.as_deref(), Some("billing"));
        assert_eq!(
            letter.envelope.payload, raw.payload,
            "the raw bytes are kept"
        );
        assert_eq!(letter.envelope.header(KEY_HEADER), raw.header(KEY_HEADER));
        let why = &letter.error;
        if letter.envelope.id == wrong.id {
            assert!(
                why.contains("does not decrypt with key k1: wrong key"),
                "{why}"
            );
        } else if letter.envelope.id == missing.id {
            assert!(
                why.contains("no key k9 in the keyring (it has: k1)"),
                "{why}"
            );
        } else {
            assert!(why.contains("not encrypted"), "{why}");
        }
    }
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert!(rx.try_recv().is_err(), "none of them reached the handler");
    let stats = sub.stats();
    assert_eq!((stats.decode_failed, stats.dead_lettered), (3, 3));
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_plaintext_lets_unencrypted_messages_through_while_switching_encryption_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    log.publish(vec![charge(5).to_envelope().unwrap()])
        .await
        .unwrap();
    let enc = encryption(keys(&[("k1", 1)])).accept_plaintext(true);
    let (bus, _sub, mut rx, _letters) = typed_bus(log, Some(enc), "billing").await;
    assert_eq!(next(&mut rx).await, charge(5));
    bus.shutdown(WAIT).await.unwrap();
}

/// The in-memory path does not encrypt: nothing leaves the process, nothing is at rest.
#[tokio::test]
async fn an_in_memory_bus_never_encrypts() {
    let bus = Bus::builder()
        .transport_codec(encryption(keys(&[("k1", 1)])))
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .subscribe(
            "raw",
            "payments.#",
            switchyard::handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move { tx.send(env).map_err(|e| e.to_string()) }
            }),
        )
        .start()
        .await
        .unwrap();
    bus.publish(charge(6)).await.unwrap();
    let env = next(&mut rx).await;
    assert_eq!(env.header(KEY_HEADER), None);
    assert!(contains(&env.payload, MARKER.as_bytes()));
}

#[test]
fn sealing_binds_the_topic_and_rotation_keeps_old_keys() {
    let old = encryption(keys(&[("k1", 1)]));
    let mut env = charge(8).to_envelope().unwrap();
    old.seal(&mut env).unwrap();
    assert_eq!(
        env.content_type(),
        switchyard_contracts::SEALED_CONTENT_TYPE
    );
    // Sealing twice (a dead letter replayed as it was) does not encrypt again.
    let once = env.payload.clone();
    old.seal(&mut env).unwrap();
    assert_eq!(env.payload, once);

    let rotated = encryption(keys(&[("k1", 1), ("k2", 2)]));
    let mut moved = env.clone();
    moved.topic = Topic::new("payments.refunded").unwrap();
    assert_eq!(
        rotated.open(&mut moved),
        Err(EncryptionError::Decrypt { id: "k1".into() }),
        "a sealed payload moved to another topic does not open"
    );
    rotated.open(&mut env).unwrap();
    assert_eq!(env.content_type(), "application/json");
    assert_eq!(env.header(KEY_HEADER), None);
    assert_eq!(
        serde_json::from_slice::<CardCharged>(&env.payload).unwrap(),
        charge(8)
    );

    let mut fresh = charge(9).to_envelope().unwrap();
    rotated.seal(&mut fresh).unwrap();
    assert_eq!(fresh.header(KEY_HEADER), Some("k2"));
    let pinned = keys(&[("k1", 1), ("k2", 2)]).with_active("k1").unwrap();
    assert_eq!(pinned.active_id(), Some("k1"));

    assert!(matches!(
        Keyring::new().with_key("k1", &[0; 16]),
        Err(EncryptionError::InvalidKey { .. })
    ));
    assert!(matches!(
        Keyring::new().with_key("bad id", &[0; 32]),
        Err(EncryptionError::InvalidKeyId(_))
    ));
    assert!(matches!(
        keys(&[("k1", 1)]).with_key("k1", &[2; 32]),
        Err(EncryptionError::DuplicateKey(_))
    ));
    assert!(matches!(
        Encryption::new(Keyring::new()),
        Err(EncryptionError::NoKeys)
    ));
    let b64 = Keyring::new()
        .with_base64_key("k1", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
        .unwrap();
    let mut env = charge(10).to_envelope().unwrap();
    encryption(b64).seal(&mut env).unwrap();
    old.open(&mut env).unwrap();
    assert_eq!(
        serde_json::from_slice::<CardCharged>(&env.payload).unwrap(),
        charge(10)
    );
}

/// A bus on a log in `dir`, encrypting `payments.#` with key `k1`, and its dead letters.
fn sealing_bus(dir: &Path) -> (Bus, mpsc::UnboundedReceiver<DeadLetter>) {
    let (dtx, letters) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .transport(open_log(dir))
        .transport_codec(encryption(keys(&[("k1", 1)])))
        .dead_letters(Letters(dtx))
        .build()
        .unwrap();
    (bus, letters)
}

/// A message of an encrypted topic that its handler rejects is dead-lettered sealed, not in
/// plaintext; it opens with the keyring, and replayed as it is, it reaches the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_of_an_encrypted_topic_is_dead_lettered_sealed_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, mut letters) = sealing_bus(dir.path());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let rejected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _sub = bus
        .on("billing", move |c: CardCharged, _ctx| {
            let (tx, rejected) = (tx.clone(), rejected.clone());
            async move {
                // The first delivery is rejected, the replay is taken.
                if !rejected.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return Ok(switchyard::Outcome::reject("card declined"));
                }
                tx.send(c).map_err(|e| e.to_string())?;
                Ok::<_, String>(switchyard::Outcome::Ack)
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish(charge(13)).await.unwrap();

    let letter = next(&mut letters).await;
    assert_eq!(letter.reason, DeadLetterReason::Rejected);
    assert_eq!(letter.envelope.header(KEY_HEADER), Some("k1"));
    assert!(
        !contains(&letter.envelope.payload, MARKER.as_bytes()),
        "no plaintext in the dead letter"
    );
    let mut opened = letter.envelope.clone();
    encryption(keys(&[("k1", 1)])).open(&mut opened).unwrap();
    assert_eq!(
        serde_json::from_slice::<CardCharged>(&opened.payload).unwrap(),
        charge(13)
    );

    bus.publish_envelope(letter.envelope).await.unwrap();
    assert_eq!(
        next(&mut rx).await,
        charge(13),
        "the replay opens on its way in"
    );
    bus.shutdown(WAIT).await.unwrap();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Refund {
    card: String,
    cents: u64,
}
impl Message for Refund {
    const TOPIC: &'static str = "payments.refund";
    const KIND: switchyard::Kind = switchyard::Kind::Command;
}
impl switchyard::Command for Refund {
    type Output = u64;
}

/// A command is never sealed (it does not pass through the transport's storage), so its dead
/// letter is not either: replayed as the node replays a command (`send_envelope`), it reaches
/// its handler (found by review: the letter was sealed and the replay handed the handler
/// ciphertext).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_command_of_an_encrypted_topic_is_dead_lettered_as_it_is_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, mut letters) = sealing_bus(dir.path());
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _handler = bus
        .handle(move |r: Refund, _ctx| {
            let failed = failed.clone();
            async move {
                if !failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return Err("the first try fails".to_string());
                }
                Ok::<_, String>(r.cents)
            }
        })
        .max_attempts(1)
        .start()
        .await
        .unwrap();
    let refund = Refund {
        card: MARKER.to_owned(),
        cents: 7,
    };
    assert!(bus.send(refund.clone()).await.is_err());
    let letter = next(&mut letters).await;
    assert_eq!(letter.reason, DeadLetterReason::HandlerFailed);
    assert_eq!(letter.envelope.header(KEY_HEADER), None);
    assert_eq!(
        serde_json::from_slice::<Refund>(&letter.envelope.payload).unwrap(),
        refund
    );
    let replayed = bus.send_envelope(letter.envelope).await.unwrap();
    assert_eq!(&replayed.reply.unwrap().payload[..], b"7");
    bus.shutdown(WAIT).await.unwrap();
}

/// `seal` trusts no key-id header: only a payload that opens with the key it names, on its
/// topic, is left as it is (a replay); plaintext under a known or unknown key id, a sealed
/// payload altered or moved to another encrypted topic are refused with `NotSealed` (and the
/// reason `open` would give), and the bus refuses such a publish, so nothing reaches the
/// transport unsealed. A topic that is not encrypted is left alone, header or not.
#[test]
fn sealing_trusts_no_key_header_only_a_payload_that_opens() {
    let enc = encryption(keys(&[("k1", 1)]));
    let plain = |id: &str| {
        let mut env = charge(20).to_envelope().unwrap();
        env.headers_mut().insert(KEY_HEADER, id);
        env
    };
    for (mut env, why) in [
        (plain("k1"), "does not decrypt with key k1"),
        (plain("k9"), "no key k9 in the keyring"),
    ] {
        let before = env.payload.clone();
        let err = enc.seal(&mut env).unwrap_err();
        assert!(matches!(err, EncryptionError::NotSealed { .. }), "{err:?}");
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(env.payload, before, "left untouched when refused");
    }

    let mut sealed = charge(21).to_envelope().unwrap();
    enc.seal(&mut sealed).unwrap();
    let genuine = sealed.clone();
    enc.seal(&mut sealed).unwrap();
    assert_eq!(
        sealed.payload, genuine.payload,
        "a genuine seal is not sealed again"
    );

    let mut altered = genuine.clone();
    let mut bytes = altered.payload.to_vec();
    bytes[30] ^= 1;
    altered.payload = bytes.into();
    assert!(matches!(
        enc.seal(&mut altered),
        Err(EncryptionError::NotSealed { .. })
    ));
    let mut moved = genuine.clone();
    moved.topic = Topic::new("payments.refunded").unwrap();
    assert!(matches!(
        enc.seal(&mut moved),
        Err(EncryptionError::NotSealed { .. })
    ));

    let mut elsewhere = plain("k1");
    elsewhere.topic = Topic::new("audit.login").unwrap();
    enc.seal(&mut elsewhere).unwrap();
    assert!(contains(&elsewhere.payload, MARKER.as_bytes()));
}

/// On a bus, a publish of a plaintext event with a spoofed key id on an encrypted topic is
/// refused and nothing is written to the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_a_spoofed_key_header_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    let bus = Bus::builder()
        .transport(log.clone())
        .transport_codec(encryption(keys(&[("k1", 1)])))
        .build()
        .unwrap();
    let mut env = charge(22).to_envelope().unwrap();
    env.headers_mut().insert(KEY_HEADER, "k1");
    let r = bus.publish_envelope(env).await;
    assert!(
        matches!(&r, Err(switchyard::PublishError::Refused(t)) if t.contains("not sealed")),
        "{r:?}"
    );
    assert!(stored(&log).is_empty(), "nothing stored");
    // The control: the same event without the header is stored, sealed.
    bus.publish(charge(23)).await.unwrap();
    let at_rest = stored(&log);
    assert_eq!(at_rest.len(), 1);
    assert_eq!(at_rest[0].header(KEY_HEADER), Some("k1"));
    let (found, files) = grep_files(dir.path(), MARKER.as_bytes());
    assert!(files > 0 && !found, "plaintext on disk ({files} files)");
}
