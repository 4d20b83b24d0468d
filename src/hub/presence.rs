//! Presence (RFC 6121 §4): who is online on which device, and who may hear about it.

use bytes::Bytes;
use prost::Message;
use tern_bridge::Jid;
use tern_schemas::v1::{self, down, presence::Show};

use super::Hub;
use crate::core::session::Identity;
use crate::ids::{DeviceId, UserName};

impl Hub {
    /// A session opened: the device is available (its initial presence). Returns what it
    /// must learn at once, its contacts' presence as a probe would tell it (RFC 6121 §4.2–4.3);
    /// the caller hands these straight to the session, which cannot miss them the way it could
    /// miss a router message sent before its subscription took effect.
    pub fn device_online(&self, id: &Identity) -> Vec<Bytes> {
        self.on_presence(id, None, v1::Presence::default());
        // Remote contacts' presence arrives later, as their servers answer the probes.
        self.probe_remote_contacts(&id.user);
        // A phone coming back wants its rooms alive: check that they still have the user.
        self.check_rooms(&id.user);
        let mut out = Vec::new();
        for contact in self.contacts(&id.user, |r| r.to) {
            for (device, mut p) in self.presence_of(&contact) {
                p.peer = format!("{}/{}", self.bare_jid(&contact), device.as_str());
                let down = v1::Down { body: Some(down::Body::Presence(p)), ..Default::default() };
                out.push(Bytes::from(down.encode_to_vec()));
            }
        }
        out
    }

    /// A session ended, cleanly or not: the device is unavailable.
    pub fn device_offline(&self, id: &Identity) {
        let gone = v1::Presence { show: Show::Unavailable as i32, ..Default::default() };
        self.on_presence(id, None, gone);
    }

    /// Broadcast presence (no `to`) or directed presence (`to`) from a device.
    pub(super) fn on_presence(&self, from: &Identity, to: Option<Jid>, mut p: v1::Presence) {
        let remote = p.clone();
        p.peer = self.full_jid(from);
        if let Some(to) = to {
            if self.room_presence(from, &to, remote.clone()) {
                return;
            }
            if let Some(user) = self.local_user(&to) {
                self.live(&user, down::Body::Presence(p));
            } else if self.is_remote(&to) {
                self.presence_to_remote(from, &to, remote);
            }
            return;
        }
        let others: Vec<DeviceId> = {
            let mut table = self.presence.lock().unwrap_or_else(|e| e.into_inner());
            let devices = table.entry(from.user.clone()).or_default();
            if p.show == Show::Unavailable as i32 {
                devices.remove(&from.device);
            } else {
                devices.insert(from.device.clone(), p.clone());
            }
            devices.keys().filter(|d| **d != from.device).cloned().collect()
        };
        // The user's other devices, not the one that sent it (it knows its own presence).
        for device in others {
            let to = Identity { user: from.user.clone(), device };
            self.live_to_device(&to, down::Body::Presence(p.clone()));
        }
        for contact in self.contacts(&from.user, |r| r.from) {
            self.live(&contact, down::Body::Presence(p.clone()));
        }
        for contact in self.remote_contacts(&from.user, |r| r.from) {
            self.presence_to_remote(from, &contact, remote.clone());
        }
    }

    /// The current presence of each online device of `user`.
    pub(super) fn presence_of(&self, user: &UserName) -> Vec<(DeviceId, v1::Presence)> {
        let table = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        table.get(user).map(|d| d.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    /// Local contacts of `user` whose record passes `keep`.
    pub(super) fn contacts(
        &self,
        user: &UserName,
        keep: impl Fn(&crate::store::roster::ContactRecord) -> bool,
    ) -> Vec<UserName> {
        let all = match self.store.rosters.all(user) {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "roster read failed; presence not routed");
                return Vec::new();
            }
        };
        all.into_iter()
            .filter(|(_, r)| keep(r))
            .filter_map(|(jid, _)| Jid::parse(&jid).ok().and_then(|j| self.local_user(&j)))
            .collect()
    }
}
