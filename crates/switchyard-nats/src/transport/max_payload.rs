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
        let limit = self.limit();
        let size = payload.saturating_add(codec::header_bytes(headers));
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
