//! The intake check: a test every envelope the bus takes in from its transport passes before
//! it is queued for a handler (see [`BusBuilder::intake_check`](crate::BusBuilder::intake_check)).
//!
//! The bus knows nothing of schemas; `switchyard-contracts`' `Validator::intake_check` is the
//! check that validates foreign messages against the registered JSON Schemas.
//!
//! A [`TransportCodec`] (see [`BusBuilder::transport_codec`](crate::BusBuilder::transport_codec))
//! is the reversible step around the transport: it encodes what the bus hands to the transport
//! and decodes what comes back before anything (filters, the intake check, handlers) sees it.
//! `switchyard-contracts`' `Encryption` is one: payloads are ciphertext in the log and in NATS
//! streams, plaintext for handlers.

use std::sync::Arc;

use switchyard_core::{Envelope, PublishError};

/// What the [intake check](crate::BusBuilder::intake_check) says about one envelope that
/// arrived over the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeVerdict {
    /// Deliver it.
    Accept,
    /// Deliver it, and log the text as a warning (counted in the subscription's
    /// `intake_warned`).
    Warn(String),
    /// Never deliver it: it goes to the dead-letter sink with reason `Rejected` and the text as
    /// its error, the transport delivery is settled (terminated, so it is not redelivered), and
    /// it is counted in the subscription's `intake_rejected` and `dead_lettered`.
    Reject(String),
}

/// The check as the bus keeps it.
pub(crate) type IntakeCheck = Arc<dyn Fn(&Envelope) -> IntakeVerdict + Send + Sync>;

/// Runs the intake check on `env`, catching a panic in it: `Err` with the text
/// "intake check panicked: <message>", and the caller dead-letters the message (reason
/// `Panicked`, as for a panicking filter) instead of the panic stopping the subscription's
/// pump (or the task serving a remote command).
pub(crate) fn run_check(check: &IntakeCheck, env: &Envelope) -> Result<IntakeVerdict, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(env))).map_err(|panic| {
        format!(
            "intake check panicked: {}",
            crate::state::panic_message(&*panic)
        )
    })
}

/// A reversible transformation of the events a bus carries on its
/// [transport](crate::BusBuilder::transport): [`encode`](Self::encode) runs on each event just
/// before it is handed to the transport (after the publish hooks), [`decode`](Self::decode) on
/// each envelope that arrives from it, before the subscription's filters, the
/// [intake check](crate::BusBuilder::intake_check) and the handler see it. What is at rest in
/// the transport (the log's segment files, a NATS stream) is the encoded form.
///
/// Only events on a transport pass through it: an in-memory bus never encodes (nothing leaves
/// the process), and commands and requests sent to another process travel over the
/// transport's request/reply path unencoded (they are not stored).
pub trait TransportCodec: Send + Sync + 'static {
    /// Encodes one event on its way to the transport. An error is what the publisher gets;
    /// nothing is published.
    fn encode(&self, env: &mut Envelope) -> Result<(), PublishError>;

    /// Decodes one envelope that arrived from the transport. An error (its text says why)
    /// means the message is never delivered: the envelope *as it arrived* (raw bytes) goes
    /// to the dead-letter sink with reason `DecodeFailed` and the text as its error, and the
    /// delivery is terminated so it is not redelivered.
    fn decode(&self, env: &mut Envelope) -> Result<(), String>;

    /// Whether dead letters are kept encoded too: `true` makes the bus (on a transport) run
    /// [`encode`](Self::encode) on every dead-lettered event's envelope before the
    /// dead-letter sink stores it, so a message that is encoded at rest in the transport (an
    /// encrypted topic) is not stored decoded (in plaintext) in the dead-letter queue when its
    /// handler fails. Commands and requests, which never pass through a codec, are stored as
    /// they are (a replay sends them to their handler as they are).
    /// A dead letter of a message that did not decode is kept as it arrived, already encoded.
    ///
    /// Only for a codec whose `encode` leaves an already encoded envelope as it is (as
    /// `switchyard-contracts`' `Encryption` does: a payload with a key id is not sealed again),
    /// since replaying such a dead letter publishes it encoded. Default `false`: dead letters
    /// are stored decoded. When `encode` fails on a dead letter, it is stored as it is (it is
    /// never lost) and the failure is logged.
    fn encodes_dead_letters(&self) -> bool {
        false
    }
}

impl<T: TransportCodec + ?Sized> TransportCodec for Arc<T> {
    fn encode(&self, env: &mut Envelope) -> Result<(), PublishError> {
        (**self).encode(env)
    }

    fn decode(&self, env: &mut Envelope) -> Result<(), String> {
        (**self).decode(env)
    }

    fn encodes_dead_letters(&self) -> bool {
        (**self).encodes_dead_letters()
    }
}

/// The codecs as the bus keeps them, in the order added.
pub(crate) type Codecs = Vec<Arc<dyn TransportCodec>>;
