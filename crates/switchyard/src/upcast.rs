//! The decode hook for schema evolution: a message written at an older
//! [`Message::VERSION`](switchyard_core::Message::VERSION) is brought up to the version a typed
//! handler decodes before it is decoded. The registry of upcasters lives in
//! `switchyard-contracts`; the bus only knows this trait.

use std::sync::Weak;

use bytes::Bytes;
#[cfg(doc)]
use switchyard_core::Shared;
use switchyard_core::{BoxError, CodecDirection, CodecError, Envelope, Message, MessageArg};

use crate::state::BusInner;

/// Rewrites the payload of an older version of a message type into a newer one; set with
/// [`BusBuilder::upcaster`](crate::BusBuilder::upcaster).
///
/// Typed handlers consult it only when a message's `type_version` is lower than the version
/// of the type they decode and its `type_name` is that type's, so messages at the current
/// version cost one integer comparison. A message with no `type_name` (published raw, e.g.
/// through the gateway, where `type_version` is just the default 1) is decoded as it is.
pub trait Upcast: Send + Sync + 'static {
    /// Brings `payload`, written as version `from` of `type_name`, up to version `to`.
    /// `Ok(None)` when nothing is registered for the type (the payload is decoded as it is);
    /// an error dead-letters the message as undecodable.
    fn upcast(
        &self,
        type_name: &str,
        from: u32,
        to: u32,
        payload: &[u8],
    ) -> Result<Option<Bytes>, BoxError>;
}

/// Decodes what a typed handler takes (`A`: a message `T`, or a [`Shared`] one) from `env`,
/// upcasting first when the envelope is older than `T`.
///
/// A `T` published in this process carries its value beside the payload: a handler taking
/// `T` gets a clone of it (or the value itself when `env` is its last holder), one taking
/// `Shared<T>` the value itself, shared, instead of decoding (the value as published; see
/// `Message` for how it can differ from a decode). `env` lets go of it (see `Local::take`
/// and `Local::take_shared`). Otherwise the payload is decoded, once.
///
/// Inlined into the handler's call (the take is a few instructions); the decode stays out
/// of line.
#[inline]
pub(crate) fn decode<A: MessageArg>(
    bus: &Weak<BusInner>,
    env: &mut Envelope,
) -> Result<A, CodecError> {
    if let Some(msg) = A::take(&mut env.local, &env.payload) {
        return Ok(msg);
    }
    decode_payload::<A::Message>(bus, env).map(A::from_decoded)
}

/// Decodes what a typed handler takes from the queued `env`, which stays as it is: as
/// [`decode`] from a copy of `env` (the value published in this process, cloned or shared; else
/// the payload decoded), and whether the value was taken from `env.local` (a copy would have
/// let go of it, see `Local::take`).
#[inline]
pub(crate) fn decode_queued<A: MessageArg>(
    bus: &Weak<BusInner>,
    env: &Envelope,
) -> Result<(A, bool), CodecError> {
    if let Some(msg) = A::get(&env.local, &env.payload) {
        return Ok((msg, true));
    }
    decode_payload::<A::Message>(bus, env).map(|msg| (A::from_decoded(msg), false))
}

/// Decodes `T` from `env`'s payload, upcast first when the envelope is older than `T`.
#[inline(never)]
fn decode_payload<T: Message>(bus: &Weak<BusInner>, env: &Envelope) -> Result<T, CodecError> {
    if env.type_version < T::VERSION
        && env.type_name.as_deref() == Some(T::type_name())
        && let Some(inner) = bus.upgrade()
        && let Some(up) = &inner.upcast
    {
        let upcast = up
            .upcast(T::type_name(), env.type_version, T::VERSION, &env.payload)
            .map_err(|source| CodecError {
                direction: CodecDirection::Decode,
                type_name: std::any::type_name::<T>(),
                source,
            })?;
        if let Some(bytes) = upcast {
            return T::decode(&bytes);
        }
    }
    T::from_envelope(env)
}
