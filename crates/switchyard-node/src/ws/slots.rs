//! Connection slots: `ws.max_connections` for all clients together and
//! `ws.max_connections_per_principal` for each principal, taken before the upgrade and given
//! back when the connection ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::targets::Hub;
use crate::config::WsConfig;
use crate::error::{ApiError, ErrorKind};

/// Connections open now, by principal name (only principals with one or more).
pub(crate) type PerPrincipal = std::sync::Mutex<HashMap<String, usize>>;

/// One connection counted against both limits until dropped.
pub(super) struct Slot {
    hub: Arc<Hub>,
    principal: String,
}

impl Slot {
    /// Takes a slot for a connection of `principal`, or refuses it (503 `not_ready`, naming
    /// the limit) when either limit is reached. Nothing stays taken on refusal.
    pub(super) fn take(
        hub: &Arc<Hub>,
        config: &WsConfig,
        principal: &str,
    ) -> Result<Self, ApiError> {
        let max = config.max_connections;
        if hub.connections.fetch_add(1, Ordering::SeqCst) >= max {
            hub.connections.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                ErrorKind::NotReady,
                format!("too many WebSocket connections: ws.max_connections = {max}"),
            ));
        }
        // From here the global count is held; a refusal below gives it back on drop.
        let mut slot = Self {
            hub: hub.clone(),
            principal: String::new(),
        };
        let per = config.per_principal_limit();
        let mut open = lock(&hub.per_principal);
        let n = open.entry(principal.to_owned()).or_default();
        if *n >= per {
            if *n == 0 {
                open.remove(principal);
            }
            return Err(ApiError::new(
                ErrorKind::NotReady,
                format!(
                    "too many WebSocket connections for principal {principal:?}: \
                     ws.max_connections_per_principal = {per}"
                ),
            ));
        }
        *n += 1;
        principal.clone_into(&mut slot.principal);
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.principal.is_empty() {
            let mut open = lock(&self.hub.per_principal);
            if let Some(n) = open.get_mut(&self.principal) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.principal);
                }
            }
        }
        self.hub.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock(m: &PerPrincipal) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
