//! Payload encryption: per topic pattern, event payloads are sealed with XChaCha20-Poly1305
//! (an AEAD) before the bus hands them to its transport and opened when they come back, so
//! the embedded log's segment files and NATS streams hold ciphertext while handlers see
//! plaintext. The key id travels in the [`KEY_HEADER`] header; a [`Keyring`] holds every key
//! that may still have to decrypt and one active key that encrypts (rotation).
//!
//! ```
//! use switchyard_contracts::{Encryption, Keyring};
//!
//! let keys = Keyring::new()
//!     .with_key("2026-11", &[7u8; 32])?
//!     .with_key("2026-12", &[9u8; 32])?; // the last one added encrypts
//! let encryption = Encryption::new(keys)?.topic("orders.#")?.topic("payments.#")?;
//!
//! let mut env = switchyard::Envelope::new(switchyard::Topic::new("orders.placed")?, "secret");
//! encryption.seal(&mut env)?;
//! assert_eq!(env.header(switchyard_contracts::KEY_HEADER), Some("2026-12"));
//! assert!(!env.payload.windows(6).any(|w| w == b"secret"));
//! encryption.open(&mut env)?;
//! assert_eq!(&env.payload[..], b"secret");
//!
//! // On a bus: ciphertext on the transport, plaintext for handlers.
//! # let dir = tempfile::tempdir()?;
//! # let log = switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path()))?;
//! let bus = switchyard::Bus::builder().transport(log).transport_codec(encryption).build()?;
//! # let _ = bus;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use chacha20poly1305::aead::common::Generate as _;
use chacha20poly1305::{AeadInOut, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use switchyard::TransportCodec;
use switchyard_core::{Envelope, Pattern, PublishError, SmolStr, Topic};

/// The header naming the key a payload was encrypted with. Present only while the payload is
/// ciphertext (on the transport, in a dead letter of a message that could not be opened).
pub const KEY_HEADER: &str = "encryption-key";

/// The header keeping the plaintext's content type while the payload is ciphertext.
pub const CONTENT_TYPE_HEADER: &str = "encryption-content-type";

/// The content type of a sealed payload.
pub const SEALED_CONTENT_TYPE: &str = "application/vnd.switchyard.sealed";

/// Bytes of a key: 256 bits.
pub const KEY_BYTES: usize = 32;

const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;

/// Everything that can go wrong configuring keys or sealing and opening payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptionError {
    /// A key id is empty or has characters other than ASCII letters, digits, `.`, `_`, `-`.
    #[error("invalid key id {0:?}: use ASCII letters, digits, '.', '_' or '-'")]
    InvalidKeyId(String),
    /// A key is not 32 bytes (or not valid base64).
    #[error("key {id}: {reason}")]
    InvalidKey {
        /// The key's id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two keys with one id.
    #[error("key {0} is given twice")]
    DuplicateKey(String),
    /// A key id the keyring does not hold (to activate, or to decrypt a message with).
    #[error("no key {id} in the keyring (it has: {known})")]
    UnknownKey {
        /// The id asked for.
        id: String,
        /// The ids the keyring has, comma-separated.
        known: String,
    },
    /// The keyring has no key.
    #[error("the keyring has no key")]
    NoKeys,
    /// A topic pattern is not valid.
    #[error("invalid topic pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern given.
        pattern: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A sealed payload that is too short to hold a nonce and a tag.
    #[error("sealed payload of {len} bytes is too short (at least {min})")]
    Truncated {
        /// Its length.
        len: usize,
        /// The least a sealed payload has.
        min: usize,
    },
    /// Authentication failed: the key with this id is not the one it was sealed with, or the
    /// payload, its topic or its key id were changed.
    #[error(
        "does not decrypt with key {id}: wrong key (another key under the same id) or the payload was altered"
    )]
    Decrypt {
        /// The key id in the message.
        id: String,
    },
    /// A message without a key id on a topic whose payloads must be encrypted.
    #[error("not encrypted, but topic {topic} requires encryption (pattern {pattern})")]
    NotEncrypted {
        /// Its topic.
        topic: String,
        /// The encryption pattern the topic matches.
        pattern: String,
    },
    /// The cipher refused the payload (larger than it can seal) or the operating system's
    /// random source failed.
    #[error("cannot encrypt: {0}")]
    Seal(String),
    /// A message to seal carries a key id ([`KEY_HEADER`]) but its payload is not sealed with
    /// that key for its topic (a publisher-set header, or a sealed payload that does not
    /// open here): it is refused rather than stored as it is.
    #[error(
        "refused: the message on {topic} carries key id {id:?} but its payload is not sealed with it ({reason})"
    )]
    NotSealed {
        /// Its topic.
        topic: String,
        /// The key id it carries.
        id: String,
        /// Why it does not open (the error [`open`](Encryption::open) would give).
        reason: Box<EncryptionError>,
    },
}

/// Keys by id, one of them active: the active key encrypts, every key decrypts what was
/// encrypted with it. Rotation: add a new key (it becomes active), keep the old ones while
/// messages encrypted with them may still be read (in the log, in a stream, in dead letters).
///
/// Key bytes are kept only inside the ciphers (not printed by `Debug`).
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<(String, XChaCha20Poly1305)>,
    active: usize,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .field("active", &self.active_id())
            .finish()
    }
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a 32-byte key under `id`; it becomes the active key (call
    /// [`with_active`](Self::with_active) afterwards to choose another).
    pub fn with_key(mut self, id: &str, key: &[u8]) -> Result<Self, EncryptionError> {
        self.add(id, key)?;
        Ok(self)
    }

    /// [`with_key`](Self::with_key) with the key in standard base64 (`openssl rand -base64 32`).
    pub fn with_base64_key(mut self, id: &str, key: &str) -> Result<Self, EncryptionError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|e| EncryptionError::InvalidKey {
                id: id.to_owned(),
                reason: format!("not base64: {e}"),
            })?;
        self.add(id, &bytes)?;
        Ok(self)
    }

    /// Makes the key `id` the one that encrypts.
    pub fn with_active(mut self, id: &str) -> Result<Self, EncryptionError> {
        self.active = self.position(id)?;
        Ok(self)
    }

    /// Adds a key (see [`with_key`](Self::with_key)).
    pub fn add(&mut self, id: &str, key: &[u8]) -> Result<(), EncryptionError> {
        let valid = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(EncryptionError::InvalidKeyId(id.to_owned()));
        }
        if self.keys.iter().any(|(k, _)| k == id) {
            return Err(EncryptionError::DuplicateKey(id.to_owned()));
        }
        let cipher =
            XChaCha20Poly1305::new_from_slice(key).map_err(|_| EncryptionError::InvalidKey {
                id: id.to_owned(),
                reason: format!("{} bytes, a key has {KEY_BYTES}", key.len()),
            })?;
        self.keys.push((id.to_owned(), cipher));
        self.active = self.keys.len() - 1;
        Ok(())
    }

    /// The id of the key that encrypts (`None` when empty).
    pub fn active_id(&self) -> Option<&str> {
        self.keys.get(self.active).map(|(id, _)| id.as_str())
    }

    /// Every key id, in the order added.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    fn find(&self, id: &str) -> Result<&(String, XChaCha20Poly1305), EncryptionError> {
        self.keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| self.unknown(id))
    }

    fn unknown(&self, id: &str) -> EncryptionError {
        EncryptionError::UnknownKey {
            id: id.to_owned(),
            known: self.ids().collect::<Vec<_>>().join(", "),
        }
    }

    fn position(&self, id: &str) -> Result<usize, EncryptionError> {
        self.keys
            .iter()
            .position(|(k, _)| k == id)
            .ok_or_else(|| self.unknown(id))
    }
}

/// Which topics are encrypted and with which keys; a [`TransportCodec`] for
/// [`BusBuilder::transport_codec`](switchyard::BusBuilder::transport_codec).
///
/// - Sealing ([`seal`](Self::seal), on the way to the transport): a payload whose topic
///   matches one of the [`topic`](Self::topic) patterns is encrypted with the active key,
///   with a fresh random 192-bit nonce; the key id goes in [`KEY_HEADER`], the content type
///   in [`CONTENT_TYPE_HEADER`]. The topic and key id are authenticated with it (a sealed
///   payload moved to another topic does not open). A payload that already carries a key id
///   (a dead letter replayed as it was) is left as it is when it opens with that key;
///   otherwise (a publisher-set header on plaintext, an unknown key, an altered payload) it
///   is refused ([`EncryptionError::NotSealed`]), never passed to the transport unsealed.
/// - Opening ([`open`](Self::open), on the way back): a payload with a key id is decrypted
///   with that key, whatever its topic, and the two headers are removed; a missing key or a
///   failed authentication is an error, and the bus dead-letters the message as it arrived.
///   A payload without a key id on an encrypted topic is an error too, unless
///   [`accept_plaintext`](Self::accept_plaintext) (for switching encryption on over a log
///   that already holds plaintext).
///
/// - Dead letters (on a bus with a transport): an event of an encrypted topic is dead-lettered
///   sealed, whether it could not be opened (kept as it arrived) or its handler failed or
///   rejected it (sealed again before the dead-letter sink stores it), so the dead-letter
///   queue holds no plaintext of an encrypted topic. Browsing shows the ciphertext with its
///   key id; [`open`](Self::open) reads it, and a replay publishes it as it is (sealing leaves
///   a sealed payload alone), to be opened on its way back in. Commands and requests are never
///   sealed (they do not pass through the transport's storage), nor are their dead letters.
///
/// Only what goes through the transport is sealed: on a bus without a transport, nothing is.
#[derive(Debug, Clone)]
pub struct Encryption {
    keyring: Keyring,
    patterns: Vec<Pattern>,
    accept_plaintext: bool,
}

impl Encryption {
    /// Encryption with these keys, for no topic yet (add them with [`topic`](Self::topic)).
    pub fn new(keyring: Keyring) -> Result<Self, EncryptionError> {
        if keyring.keys.is_empty() {
            return Err(EncryptionError::NoKeys);
        }
        Ok(Self {
            keyring,
            patterns: Vec::new(),
            accept_plaintext: false,
        })
    }

    /// Encrypts the payloads of topics matching `pattern` (`*` and `#` wildcards).
    pub fn topic(mut self, pattern: &str) -> Result<Self, EncryptionError> {
        let p = Pattern::new(pattern).map_err(|e| EncryptionError::Pattern {
            pattern: pattern.to_owned(),
            reason: e.to_string(),
        })?;
        self.patterns.push(p);
        Ok(self)
    }

    /// Whether a message without a key id on an encrypted topic is delivered (`true`) or
    /// dead-lettered (`false`, the default).
    pub fn accept_plaintext(mut self, accept: bool) -> Self {
        self.accept_plaintext = accept;
        self
    }

    /// The keys.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The first pattern `topic` matches, if its payloads are encrypted.
    pub fn pattern_for(&self, topic: &Topic) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.matches(topic))
    }

    /// Encrypts the payload in place when its topic is encrypted (see the type's docs).
    ///
    /// A message that already carries a key id is left as it is only when its payload really
    /// is sealed with that key for its topic (it authenticates, as [`open`](Self::open) checks);
    /// otherwise it is refused with [`EncryptionError::NotSealed`], never stored as it is: the
    /// header is one a publisher can set.
    pub fn seal(&self, env: &mut Envelope) -> Result<(), EncryptionError> {
        if self.pattern_for(&env.topic).is_none() {
            return Ok(());
        }
        if let Some(id) = env.header(KEY_HEADER) {
            return match self.decrypt(env, id) {
                Ok(_) => Ok(()),
                Err(reason) => Err(EncryptionError::NotSealed {
                    topic: env.topic.to_string(),
                    id: id.to_owned(),
                    reason: Box::new(reason),
                }),
            };
        }
        let (id, cipher) = self
            .keyring
            .keys
            .get(self.keyring.active)
            .ok_or(EncryptionError::NoKeys)?;
        let nonce = XNonce::try_generate().map_err(|e| EncryptionError::Seal(e.to_string()))?;
        let mut out = Vec::with_capacity(NONCE_BYTES + env.payload.len() + TAG_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&env.payload);
        let tag = cipher
            .encrypt_inout_detached(
                &nonce,
                &associated_data(id, &env.topic),
                out[NONCE_BYTES..].as_mut().into(),
            )
            .map_err(|e| EncryptionError::Seal(e.to_string()))?;
        out.extend_from_slice(&tag);
        env.payload = Bytes::from(out);
        env.headers_mut().insert(KEY_HEADER, id.as_str());
        let plain_type = SmolStr::from(env.content_type());
        env.set_content_type(SEALED_CONTENT_TYPE);
        env.headers_mut().insert(CONTENT_TYPE_HEADER, plain_type);
        Ok(())
    }

    /// Decrypts the payload in place when it carries a key id (see the type's docs).
    pub fn open(&self, env: &mut Envelope) -> Result<(), EncryptionError> {
        let Some(id) = env.header(KEY_HEADER) else {
            return match self.pattern_for(&env.topic) {
                Some(p) if !self.accept_plaintext => Err(EncryptionError::NotEncrypted {
                    topic: env.topic.to_string(),
                    pattern: p.to_string(),
                }),
                _ => Ok(()),
            };
        };
        let plain = self.decrypt(env, id)?;
        env.payload = Bytes::from(plain);
        env.headers_mut().remove(KEY_HEADER);
        if let Some(content_type) = env.headers_mut().remove(CONTENT_TYPE_HEADER) {
            env.set_content_type(content_type);
        }
        Ok(())
    }

    /// The plaintext of `env`'s payload sealed with key `id`, if it authenticates.
    fn decrypt(&self, env: &Envelope, id: &str) -> Result<Vec<u8>, EncryptionError> {
        let (id, cipher) = self.keyring.find(id)?;
        let len = env.payload.len();
        if len < NONCE_BYTES + TAG_BYTES {
            return Err(EncryptionError::Truncated {
                len,
                min: NONCE_BYTES + TAG_BYTES,
            });
        }
        let (nonce, rest) = env.payload.split_at(NONCE_BYTES);
        let (sealed, tag) = rest.split_at(rest.len() - TAG_BYTES);
        let nonce =
            XNonce::try_from(nonce).map_err(|_| EncryptionError::Decrypt { id: id.clone() })?;
        let tag = Tag::try_from(tag).map_err(|_| EncryptionError::Decrypt { id: id.clone() })?;
        let mut plain = sealed.to_vec();
        cipher
            .decrypt_inout_detached(
                &nonce,
                &associated_data(id, &env.topic),
                plain.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| EncryptionError::Decrypt { id: id.clone() })?;
        Ok(plain)
    }
}

/// What is authenticated with the payload: the format, the key id and the topic.
fn associated_data(id: &str, topic: &Topic) -> Vec<u8> {
    let mut aad = Vec::with_capacity(24 + id.len() + topic.as_str().len());
    aad.extend_from_slice(b"switchyard-sealed/1\0");
    aad.extend_from_slice(id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(topic.as_str().as_bytes());
    aad
}

impl TransportCodec for Encryption {
    fn encode(&self, env: &mut Envelope) -> Result<(), PublishError> {
        self.seal(env)
            .map_err(|e| PublishError::Refused(format!("payload encryption: {e}")))
    }

    fn decode(&self, env: &mut Envelope) -> Result<(), String> {
        self.open(env)
            .map_err(|e| format!("payload decryption failed: {e}"))
    }

    /// `true`: a message of an encrypted topic whose handler failed is dead-lettered sealed,
    /// not in plaintext (sealing leaves a sealed payload as it is, so a replay works).
    fn encodes_dead_letters(&self) -> bool {
        true
    }
}
