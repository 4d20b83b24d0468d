//! Which connection currently holds each (user, device), and the mailbox through which the hub
//! reaches it: wakes for new durable inbox entries, live envelopes, and takeovers (MQTT 3.1.1
//! §3.1.4: the server disconnects the existing client with the same id).
//!
//! Wakes and live envelopes used to travel over a rumqttd router link per session. They never
//! need topic matching (the hub always knows the user, or the device), so delivering them here
//! saves the router thread's hop per message, and an idle phone that uses no plain topics
//! needs no router link at all (no link channels, router connection state or filter logs).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::core::session::Identity;
use crate::ids::{DeviceId, Seq, UserName};

/// Live envelopes one session may have waiting; a session that falls this far behind loses the
/// oldest (they are ephemeral: presence and chat states, superseded by the next ones anyway).
pub const LIVE_QUEUE: usize = 256;

/// Live sessions by user, then device.
#[derive(Default)]
pub struct Registry {
    users: Mutex<HashMap<UserName, Vec<Held>>>,
    next_id: AtomicU64,
    connections: AtomicUsize,
}

/// One device's current session.
struct Held {
    device: DeviceId,
    conn: u64,
    mailbox: Arc<Mailbox>,
}

/// What the hub left for one session since the driver last looked.
#[derive(Default)]
pub struct Mail {
    /// Another connection took this identity over.
    pub kicked: bool,
    /// The highest durable inbox position announced.
    pub wake: Option<Seq>,
    /// Encoded `Down` envelopes to send as they are, oldest first.
    pub live: VecDeque<Bytes>,
}

/// A session's mailbox: the hub writes, the session's driver waits on it and takes the mail.
#[derive(Default)]
pub struct Mailbox {
    mail: Mutex<Mail>,
    notify: Notify,
}

impl Mailbox {
    fn post(&self, f: impl FnOnce(&mut Mail)) {
        f(&mut self.lock());
        // A permit is stored when the driver is not waiting, so nothing posted is missed.
        self.notify.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Mail> {
        // The mail is plain data, consistent after every statement: a poisoned guard is usable.
        self.mail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until something was posted.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Takes everything posted so far.
    pub fn take(&self) -> Mail {
        std::mem::take(&mut *self.lock())
    }
}

/// A connection's claim on the registry.
pub struct Claim {
    /// Where the hub posts for this session.
    pub mailbox: Arc<Mailbox>,
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

    fn lock(&self) -> MutexGuard<'_, HashMap<UserName, Vec<Held>>> {
        // Every change to the map is a single insert or remove: a poisoned guard is consistent.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `id` for a new session, kicking whoever held it.
    pub fn claim(&self, id: &Identity) -> Claim {
        let conn = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::default());
        let held = Held { device: id.device.clone(), conn, mailbox: mailbox.clone() };
        let mut users = self.lock();
        let devices = users.entry(id.user.clone()).or_default();
        match devices.iter_mut().find(|h| h.device == id.device) {
            Some(slot) => std::mem::replace(slot, held).mailbox.post(|m| m.kicked = true),
            None => {
                devices.push(held);
                metrics::gauge!("tern_devices_online").increment(1.0);
            }
        }
        Claim { mailbox, conn }
    }

    /// Releases `id` if `claim` still holds it; false when a newer session has taken it over,
    /// in which case the device is still online and nothing should say otherwise.
    pub fn release(&self, id: &Identity, claim: &Claim) -> bool {
        let mut users = self.lock();
        let Some(devices) = users.get_mut(&id.user) else { return false };
        let Some(i) = devices.iter().position(|h| h.device == id.device && h.conn == claim.conn) else {
            return false;
        };
        devices.swap_remove(i);
        if devices.is_empty() {
            users.remove(&id.user);
        }
        metrics::gauge!("tern_devices_online").decrement(1.0);
        true
    }

    /// Closes every session of `user` (its account was deleted or its password changed).
    pub fn kick_user(&self, user: &UserName) -> usize {
        let users = self.lock();
        let devices = users.get(user).map(Vec::as_slice).unwrap_or_default();
        for held in devices {
            held.mailbox.post(|m| m.kicked = true);
        }
        devices.len()
    }

    /// Tells every session of `user` that its inbox is durable up to `seq`.
    pub fn wake(&self, user: &UserName, seq: Seq) {
        self.post_user(user, |m| m.wake = Some(m.wake.map_or(seq, |w| w.max(seq))));
    }

    /// Hands an encoded `Down` to every session of `user`.
    pub fn live(&self, user: &UserName, down: Bytes) {
        self.post_user(user, |m| push_live(m, down.clone()));
    }

    /// Hands an encoded `Down` to the session of one device, if it is online.
    pub fn live_to_device(&self, id: &Identity, down: Bytes) {
        let users = self.lock();
        let held = users.get(&id.user).and_then(|d| d.iter().find(|h| h.device == id.device));
        if let Some(held) = held {
            held.mailbox.post(|m| push_live(m, down));
        }
    }

    fn post_user(&self, user: &UserName, f: impl Fn(&mut Mail)) {
        let users = self.lock();
        for held in users.get(user).map(Vec::as_slice).unwrap_or_default() {
            held.mailbox.post(&f);
        }
    }

    /// A unique router link id for this claim (rumqttd refuses `+$#/` in client ids).
    pub fn link_id(id: &Identity, claim: &Claim) -> String {
        format!("{}:{}:{}", id.user.as_str(), id.device.as_str(), claim.conn)
    }
}

fn push_live(mail: &mut Mail, down: Bytes) {
    if mail.live.len() >= LIVE_QUEUE {
        mail.live.pop_front();
        metrics::counter!("tern_live_dropped_total").increment(1);
    }
    mail.live.push_back(down);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str, device: &str) -> Identity {
        Identity { user: UserName::parse(user).unwrap(), device: DeviceId::parse(device).unwrap() }
    }

    #[test]
    fn wakes_reach_every_device_of_the_user_only_and_keep_the_highest() {
        let r = Registry::default();
        let (a1, a2, b) =
            (r.claim(&id("alice", "p1")), r.claim(&id("alice", "p2")), r.claim(&id("bob", "p1")));
        let alice = UserName::parse("alice").unwrap();
        r.wake(&alice, Seq(7));
        r.wake(&alice, Seq(5));
        for c in [&a1, &a2] {
            assert_eq!(c.mailbox.take().wake, Some(Seq(7)));
        }
        let bob = b.mailbox.take();
        assert_eq!((bob.wake, bob.live.len(), bob.kicked), (None, 0, false));
    }

    #[test]
    fn live_to_a_device_reaches_that_device_only_and_the_queue_is_bounded() {
        let r = Registry::default();
        let (p1, p2) = (r.claim(&id("alice", "p1")), r.claim(&id("alice", "p2")));
        for n in 0..LIVE_QUEUE + 3 {
            r.live_to_device(&id("alice", "p2"), Bytes::from(n.to_string()));
        }
        assert!(p1.mailbox.take().live.is_empty());
        let live = p2.mailbox.take().live;
        assert_eq!(live.len(), LIVE_QUEUE);
        assert_eq!(live.front().unwrap(), &Bytes::from("3"), "the oldest were dropped");
        r.live(&UserName::parse("alice").unwrap(), Bytes::from_static(b"x"));
        assert_eq!(p1.mailbox.take().live.len(), 1);
    }

    #[tokio::test]
    async fn a_takeover_kicks_the_old_session_and_its_release_changes_nothing() {
        let r = Registry::default();
        let old = r.claim(&id("alice", "p1"));
        let new = r.claim(&id("alice", "p1"));
        tokio::time::timeout(std::time::Duration::from_secs(1), old.mailbox.wait()).await.expect("notified");
        assert!(old.mailbox.take().kicked);
        assert!(!r.release(&id("alice", "p1"), &old), "the new session still holds the device");
        r.wake(&UserName::parse("alice").unwrap(), Seq(1));
        assert_eq!(new.mailbox.take().wake, Some(Seq(1)), "wakes go to the new session");
        assert!(r.release(&id("alice", "p1"), &new));
        assert_eq!(r.kick_user(&UserName::parse("alice").unwrap()), 0);
    }
}
