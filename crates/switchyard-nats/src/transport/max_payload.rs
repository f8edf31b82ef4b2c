//! The server's `max_payload`, kept by the transport: read when the connection is made and
//! again after every reconnect (the new server may have another limit), so the size check
//! before every publish, command and reply is one atomic load rather than a copy of the
//! client's whole server INFO (`Client::server_info` clones its strings and `connect_urls`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_nats::{Client, HeaderMap};
use switchyard_core::TooLarge;

use super::Inner;
use crate::codec;

/// Whose limit a `TooLarge` from this transport names: NATS counts the encoded headers with
/// the payload.
pub(crate) const MAX_PAYLOAD: &str = "the NATS server's max_payload (payload and headers)";

/// The largest header block JetStream stores (`math.MaxUint16` in the server): a publish
/// with more is refused, error 10097 "header size exceeds maximum allowed of 64k", however
/// far under `max_payload` the message is. Core NATS (commands, requests, replies) has no
/// such limit.
pub(crate) const STREAM_HEADERS_LIMIT: usize = 65_535;

/// Whose limit a `TooLarge` over [`STREAM_HEADERS_LIMIT`] names.
pub(crate) const STREAM_HEADERS: &str =
    "JetStream's limit on a stored message's header block (the size is of the headers alone)";

/// The `max_payload` of the server the transport's connection is on.
///
/// Shared (an `Arc`) by the transport, the client's event callback, which refreshes it on
/// [`async_nats::Event::Connected`], and whatever answers for the transport holding only its
/// client (a command's responder, an incoming request).
#[derive(Default)]
pub(crate) struct MaxPayload {
    /// The limit in bytes; 0 (no limit) until the transport is made.
    limit: AtomicUsize,
    /// The transport, for its client after a reconnect. Weak: the client's event callback
    /// holds this, and a strong handle there would keep the connection open for good.
    owner: OnceLock<Weak<Inner>>,
    /// Held while the client's server INFO is read and the limit stored, so a refresh that
    /// read an older INFO cannot store it after one that read a newer.
    storing: Mutex<()>,
}

impl MaxPayload {
    /// The limit now (0: none).
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Refuses a message of `payload` bytes sent with `headers` that the server would not
    /// take: it counts the header block ([`codec::header_bytes`]) with the payload against
    /// its `max_payload`, and drops the connection over it (the sender would then wait for
    /// its deadline). `size` in the error counts the headers.
    pub(crate) fn check(&self, payload: usize, headers: &HeaderMap) -> Result<(), TooLarge> {
        self.check_bytes(payload, codec::header_bytes(headers))
    }

    /// [`check`](Self::check) for a message JetStream is to store, which also refuses a
    /// header block over [`STREAM_HEADERS_LIMIT`] (`size` then counts the headers alone):
    /// the server would refuse it (error 10097) after it was sent.
    pub(crate) fn check_stored(&self, payload: usize, headers: &HeaderMap) -> Result<(), TooLarge> {
        let header = codec::header_bytes(headers);
        self.check_bytes(payload, header)?;
        if header > STREAM_HEADERS_LIMIT {
            return Err(TooLarge {
                size: header,
                limit: STREAM_HEADERS_LIMIT,
                limit_of: STREAM_HEADERS,
            });
        }
        Ok(())
    }

    fn check_bytes(&self, payload: usize, header: usize) -> Result<(), TooLarge> {
        let limit = self.limit();
        let size = payload.saturating_add(header);
        if limit > 0 && size > limit {
            return Err(TooLarge {
                size,
                limit,
                limit_of: MAX_PAYLOAD,
            });
        }
        Ok(())
    }

    /// Ties this to the transport `owner` once it is made, reads the limit from its client,
    /// and reads it again once any reconnect under way has finished (a reconnect whose
    /// [`Connected`](async_nats::Event::Connected) came before `owner` was known).
    pub(super) fn attach(self: &Arc<Self>, owner: &Arc<Inner>) {
        let _ = self.owner.set(Arc::downgrade(owner));
        self.store(&owner.client);
        self.refresh();
    }

    /// Reads the limit again, in a task: called on every
    /// [`Connected`](async_nats::Event::Connected). The event comes before the client has
    /// stored the new server's INFO; its connection handler stores it before it takes any
    /// command, so once a flush (a command) has gone through, the INFO read is the new
    /// server's. A flush that never completes (the connection lost again) is followed by
    /// another `Connected` and another refresh.
    pub(super) fn refresh(self: &Arc<Self>) {
        let Some(inner) = self.owner.get().and_then(Weak::upgrade) else {
            // The transport is not made yet (`attach` reads the limit) or is gone.
            return;
        };
        let client = inner.client.clone();
        drop(inner);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            if client.flush().await.is_ok() {
                this.store(&client);
            }
        });
    }

    fn store(&self, client: &Client) {
        let _one = self.storing.lock().unwrap_or_else(|p| p.into_inner());
        self.limit
            .store(client.server_info().max_payload, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block of `n` bytes: `NATS/1.0\r\n`, `X-Big: v…\r\n`, `\r\n`.
    fn block(n: usize) -> HeaderMap {
        let fixed = "NATS/1.0\r\n".len() + "X-Big: \r\n".len() + "\r\n".len();
        let mut h = HeaderMap::new();
        h.insert("X-Big", "v".repeat(n - fixed).as_str());
        assert_eq!(codec::header_bytes(&h), n);
        h
    }

    /// JetStream (nats-server 2.9.10, probed with nats-py) stores a header block of 65535
    /// bytes and refuses one of 65536 (error 10097).
    #[test]
    fn a_stored_message_may_have_a_header_block_of_65535_bytes_not_more() {
        let max = MaxPayload::default();
        max.limit.store(1024 * 1024, Ordering::Relaxed);
        assert_eq!(max.check_stored(10, &block(STREAM_HEADERS_LIMIT)), Ok(()));
        let over = max.check_stored(10, &block(STREAM_HEADERS_LIMIT + 1));
        assert_eq!(
            over,
            Err(TooLarge {
                size: STREAM_HEADERS_LIMIT + 1,
                limit: STREAM_HEADERS_LIMIT,
                limit_of: STREAM_HEADERS,
            })
        );
        // Core NATS has no such limit: only max_payload.
        assert_eq!(max.check(10, &block(STREAM_HEADERS_LIMIT + 1)), Ok(()));
        // Over both: max_payload is named, as before.
        max.limit.store(4096, Ordering::Relaxed);
        let both = max.check_stored(0, &block(70_000)).unwrap_err();
        assert_eq!(both.limit, 4096);
    }
}
