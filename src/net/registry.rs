//! Which connection currently holds each (user, device), so a new login can take over the old
//! one (MQTT 3.1.1 §3.1.4: the server disconnects the existing client with the same id).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::core::session::Identity;

/// Live sessions by identity.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Identity, (u64, Arc<Notify>)>>,
    next_id: AtomicU64,
    connections: AtomicUsize,
}

/// A connection's claim on the registry.
pub struct Claim {
    /// Fires when another connection takes this identity over.
    pub kicked: Arc<Notify>,
    conn: u64,
}

impl Registry {
    /// Counts a new connection; false (and nothing counted) when `max` are open already.
    pub fn try_connect(&self, max: usize) -> bool {
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Uncounts a connection that was counted by `try_connect`.
    pub fn disconnect(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Claims `id` for a new session, kicking whoever held it.
    pub fn claim(&self, id: &Identity) -> Claim {
        let conn = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kicked = Arc::new(Notify::new());
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match map.insert(id.clone(), (conn, kicked.clone())) {
            Some((_, old)) => old.notify_one(),
            None => metrics::gauge!("tern_devices_online").increment(1.0),
        }
        Claim { kicked, conn }
    }

    /// Releases `id` if `claim` still holds it; false when a newer session has taken it over,
    /// in which case the device is still online and nothing should say otherwise.
    pub fn release(&self, id: &Identity, claim: &Claim) -> bool {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(id).is_some_and(|(c, _)| *c == claim.conn) {
            map.remove(id);
            metrics::gauge!("tern_devices_online").decrement(1.0);
            return true;
        }
        false
    }

    /// Closes every session of `user` (its account was deleted or its password changed).
    pub fn kick_user(&self, user: &crate::ids::UserName) -> usize {
        let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for (id, (_, kicked)) in map.iter() {
            if &id.user == user {
                kicked.notify_one();
                n += 1;
            }
        }
        n
    }

    /// A unique router link id for this claim (rumqttd refuses `+$#/` in client ids).
    pub fn link_id(id: &Identity, claim: &Claim) -> String {
        format!("{}:{}:{}", id.user.as_str(), id.device.as_str(), claim.conn)
    }
}
