//! The hub applies what sessions ask for: logins, messages into inboxes, presence, rosters.
//!
//! It is shared by all connection drivers. Durable work follows one pattern: write to the
//! store, wait for the group commit, move the durable marks, then wake the recipients' sessions
//! through their mailboxes in the registry. Ephemeral envelopes go straight to the mailboxes.

mod muc;
mod muc_in;
mod presence;
mod remote;
mod remote_roster;
mod roster;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use tern_bridge::Jid;
use tern_schemas::v1::{self, down, error::Code};

use crate::auth::{password, token};
use crate::core::session::{Applied, Identity, LoginOk};
use crate::envelope::{EnvelopeError, UpCmd, UpEnvelope};
use crate::ids::{DeviceId, Seq, UserName};
use crate::mqtt::ConnCode;
use crate::net::registry::Registry;
use crate::store::inbox::{Appended, Delivery};
use crate::store::{Store, StoreError};

/// Shared state behind every session.
pub struct Hub {
    domain: String,
    store: Store,
    sessions: Arc<Registry>,
    tokens: token::TokenKey,
    token_ttl: u64,
    presence: Mutex<HashMap<UserName, HashMap<DeviceId, v1::Presence>>>,
    /// Group chat rooms users are in (XEP-0045); see `muc.rs`.
    rooms: muc::Rooms,
    // Roster changes read, decide and write two users' records; one lock keeps them consistent.
    // A std mutex, never held across an await: taking it never yields, so the synchronous
    // start of an apply (which assigns inbox sequence numbers) keeps PUBLISH order.
    roster_lock: std::sync::Mutex<()>,
    // Argon2 takes ~19 MiB and tens of ms per check: bound how many run, so a burst of bad
    // logins can neither eat the memory nor the blocking pool the group commit runs on.
    login_slots: tokio::sync::Semaphore,
    /// Federation, when `s2s.listen` is configured.
    s2s: std::sync::OnceLock<Arc<crate::s2s::S2s>>,
}

/// Password checks that may run at once; more wait up to [`HASH_WAIT`], then get "server busy".
const MAX_HASHING: usize = 4;
/// How long a password login waits for a hashing slot.
const HASH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Counts a downward envelope by kind.
fn count_out(body: &down::Body) {
    let kind = match body {
        down::Body::Chat(_) => "chat",
        down::Body::Receipt(_) => "receipt",
        down::Body::ChatState(_) => "chat_state",
        down::Body::Presence(_) => "presence",
        down::Body::Subscription(_) => "subscription",
        down::Body::Roster(_) => "roster",
        down::Body::Accepted(_) => "accepted",
        down::Body::Error(_) => "error",
        down::Body::SyncDone(_) => "sync_done",
        down::Body::Token(_) => "token",
        down::Body::Occupant(_) => "occupant",
        down::Body::Subject(_) => "subject",
    };
    metrics::counter!("tern_envelopes_out_total", "kind" => kind).increment(1);
}

/// Encodes an ephemeral envelope (no `seq`: it is not an inbox entry), counting it.
fn encode_live(body: down::Body) -> Bytes {
    count_out(&body);
    Bytes::from(v1::Down { body: Some(body), ..Default::default() }.encode_to_vec())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn internal(e: StoreError) -> EnvelopeError {
    tracing::error!(error = %e, "store failure while applying an envelope");
    EnvelopeError { id: String::new(), code: Code::Internal, text: "store failure; send again".into() }
}

impl Hub {
    /// A hub over `store`, reaching the sessions held in `sessions`.
    pub fn new(
        domain: String,
        store: Store,
        sessions: Arc<Registry>,
        token_ttl: u64,
    ) -> Result<Arc<Hub>, StoreError> {
        let tokens = token::TokenKey::from_secret(&store.users.token_secret()?);
        let hub = Arc::new(Hub {
            domain,
            store,
            sessions,
            tokens,
            token_ttl,
            presence: Mutex::new(HashMap::new()),
            rooms: muc::Rooms::default(),
            roster_lock: std::sync::Mutex::new(()),
            login_slots: tokio::sync::Semaphore::new(MAX_HASHING),
            s2s: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&hub);
        hub.store.committer.on_durable(Box::new(move |durable| {
            if let Some(hub) = weak.upgrade() {
                for (user, seq) in durable {
                    hub.wake(user, *seq);
                }
            }
        }));
        Ok(hub)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bare JID of a local user.
    pub fn bare_jid(&self, user: &UserName) -> String {
        format!("{}@{}", user.as_str(), self.domain)
    }

    /// The full JID of a device.
    pub fn full_jid(&self, id: &Identity) -> String {
        format!("{}@{}/{}", id.user.as_str(), self.domain, id.device.as_str())
    }

    /// The local user a JID names, if it is on this domain.
    fn local_user(&self, jid: &Jid) -> Option<UserName> {
        if jid.domain() != self.domain {
            return None;
        }
        UserName::parse(jid.local()?).ok()
    }

    /// Checks a login: a session token first (cheap), else the password hash (slow, off-thread).
    pub async fn login(&self, id: &Identity, secret: String) -> Result<LoginOk, ConnCode> {
        let fail = |reason: &'static str| {
            metrics::counter!("tern_auth_failures_total", "reason" => reason).increment(1);
            tracing::info!(user = %id.user, device = %id.device, reason, "login refused");
            // "Not authorized" rather than "bad user name or password": it tells a scanner
            // nothing about which names exist.
            ConnCode::NotAuthorized
        };
        let record = match self.store.users.get(&id.user) {
            Ok(Some(r)) => r,
            Ok(None) => return Err(fail("unknown user")),
            Err(e) => {
                tracing::error!(error = %e, "user store failure");
                return Err(ConnCode::ServerUnavailable);
            }
        };
        let now = now_ms() / 1000;
        let token = if token::looks_like_token(&secret) {
            self.tokens
                .verify(&secret, id.user.as_str(), id.device.as_str(), record.generation, now)
                .map_err(|_| fail("bad token"))?;
            metrics::counter!("tern_logins_total", "method" => "token").increment(1);
            None
        } else {
            let Ok(Ok(_slot)) = tokio::time::timeout(HASH_WAIT, self.login_slots.acquire()).await else {
                metrics::counter!("tern_auth_failures_total", "reason" => "busy").increment(1);
                return Err(ConnCode::ServerUnavailable);
            };
            let phc = record.phc.clone();
            let ok = tokio::task::spawn_blocking(move || password::verify_password(&phc, &secret))
                .await
                .unwrap_or(false);
            if !ok {
                return Err(fail("bad password"));
            }
            metrics::counter!("tern_logins_total", "method" => "password").increment(1);
            let expires = now + self.token_ttl;
            Some((
                self.tokens.issue(id.user.as_str(), id.device.as_str(), record.generation, expires),
                expires,
            ))
        };
        let inbox = &self.store.inbox;
        let state = inbox.cursor(&id.user, &id.device).and_then(|c| {
            if c.is_none() {
                // Remember the device from its first login, so its next CONNACK says
                // "session present" even before it has acknowledged anything.
                inbox.set_cursor(&id.user, &id.device, Seq(0))?;
            }
            Ok((c, inbox.durable(&id.user)?))
        });
        match state {
            Ok((cursor, durable)) => Ok(LoginOk { cursor, durable, token }),
            Err(e) => {
                tracing::error!(error = %e, "inbox failure at login");
                Err(ConnCode::ServerUnavailable)
            }
        }
    }

    /// Applies one upward envelope from `from`; returns once its effects are durable.
    pub async fn apply(&self, from: &Identity, env: UpEnvelope) -> Result<Applied, EnvelopeError> {
        let id = env.id.clone();
        let with_id = |mut e: EnvelopeError| {
            e.id = id.clone();
            e
        };
        let ts = now_ms();
        let reply = match env.cmd {
            UpCmd::Chat { id: msg_id, to, chat } if chat.r#type == v1::MessageType::Groupchat as i32 => {
                self.room_message(from, &msg_id, &to, chat).await.map_err(with_id)?;
                None
            }
            UpCmd::Chat { id: msg_id, to, chat } if self.is_remote(&to) => {
                let mut copy = chat.clone();
                copy.peer = to.to_string();
                copy.ts = ts;
                copy.outgoing = true;
                let body = tern_schemas::v1::up::Body::Chat(chat);
                self.send_remote(from, &msg_id, &to, &body, down::Body::Chat(copy)).await.map_err(with_id)?;
                None
            }
            UpCmd::Chat { id: msg_id, to, chat } => {
                let peer = self.recipient(&to).map_err(with_id)?;
                let mut incoming = chat.clone();
                incoming.peer = self.full_jid(from);
                incoming.ts = ts;
                incoming.outgoing = false;
                let mut copy = chat;
                copy.peer = to.to_string();
                copy.ts = ts;
                copy.outgoing = true;
                let body = |c: v1::Chat| Some(down::Body::Chat(c));
                self.store_pair(from, &msg_id, &peer, body(incoming), body(copy)).await.map_err(with_id)?;
                None
            }
            UpCmd::Receipt { id: msg_id, to, receipt } if self.is_remote(&to) => {
                let mut copy = receipt.clone();
                copy.peer = to.to_string();
                copy.outgoing = true;
                let body = tern_schemas::v1::up::Body::Receipt(receipt);
                self.send_remote(from, &msg_id, &to, &body, down::Body::Receipt(copy))
                    .await
                    .map_err(with_id)?;
                None
            }
            UpCmd::Receipt { id: msg_id, to, receipt } => {
                let peer = self.recipient(&to).map_err(with_id)?;
                let mut incoming = receipt.clone();
                incoming.peer = self.full_jid(from);
                incoming.outgoing = false;
                let mut copy = receipt;
                copy.peer = to.to_string();
                copy.outgoing = true;
                let body = |r: v1::Receipt| Some(down::Body::Receipt(r));
                self.store_pair(from, &msg_id, &peer, body(incoming), body(copy)).await.map_err(with_id)?;
                None
            }
            UpCmd::ChatState { to, state } if self.is_remote(&to) => {
                self.send_remote_ephemeral(from, &id, &to, &tern_schemas::v1::up::Body::ChatState(state));
                None
            }
            UpCmd::ChatState { to, mut state } => {
                // XEP-0085 §5.5: chat states are never stored; an unknown recipient drops them.
                if let Some(peer) = self.local_user(&to) {
                    state.peer = self.full_jid(from);
                    self.live(&peer, down::Body::ChatState(state));
                }
                None
            }
            UpCmd::Presence { to, presence } => {
                self.on_presence(from, to, presence);
                None
            }
            UpCmd::Subscription { to, kind } => {
                self.subscription(from, &to, kind).await.map_err(with_id)?;
                None
            }
            UpCmd::RosterGet { ver } => {
                let roster = self.store.rosters.answer(&from.user, ver).map_err(internal).map_err(with_id)?;
                Some(v1::Down {
                    id: id.clone(),
                    body: Some(down::Body::Roster(roster)),
                    ..Default::default()
                })
            }
            UpCmd::RosterSet { jid, name, groups } => {
                self.roster_set(from, &jid, name, groups).await.map_err(with_id)?;
                None
            }
            UpCmd::RosterRemove { jid } => {
                self.roster_remove(from, &jid).await.map_err(with_id)?;
                None
            }
            UpCmd::RoomJoin { room, nick, history, password } => {
                self.room_join(from, &id, &room, &nick, history, &password).await.map_err(with_id)?
            }
            UpCmd::RoomLeave { room, status } => {
                self.room_leave(from, &id, &room, &status).await.map_err(with_id)?;
                None
            }
            // The session handles these itself; reaching here is harmless.
            UpCmd::Ack { .. } | UpCmd::Sync { .. } | UpCmd::Hello { .. } => None,
        };
        Ok(Applied { ts, reply })
    }

    /// The local user a message goes to, or the error the sender gets.
    fn recipient(&self, to: &Jid) -> Result<UserName, EnvelopeError> {
        let err = |code, text: &str| EnvelopeError { id: String::new(), code, text: text.into() };
        if to.domain() != self.domain {
            // Federation is not wired yet: say so instead of pretending to deliver.
            return Err(err(Code::RemoteServerNotFound, "no route to that domain"));
        }
        let user = self.local_user(to).ok_or_else(|| err(Code::ServiceUnavailable, "no such user"))?;
        match self.store.users.exists(&user) {
            Ok(true) => Ok(user),
            Ok(false) => Err(err(Code::ServiceUnavailable, "no such user")),
            Err(e) => Err(internal(e)),
        }
    }

    /// Stores `incoming` for `peer` and `copy` for the sender's other devices, deduped by `msg_id`.
    async fn store_pair(
        &self,
        from: &Identity,
        msg_id: &crate::ids::MsgId,
        peer: &UserName,
        incoming: Option<down::Body>,
        copy: Option<down::Body>,
    ) -> Result<(), EnvelopeError> {
        let id = msg_id.as_str().to_owned();
        let mut deliveries = vec![Delivery {
            user: peer.clone(),
            origin: (peer == &from.user).then(|| from.device.clone()),
            down: v1::Down { id: id.clone(), body: incoming, ..Default::default() },
        }];
        if peer != &from.user {
            deliveries.push(Delivery {
                user: from.user.clone(),
                origin: Some(from.device.clone()),
                down: v1::Down { id, body: copy, ..Default::default() },
            });
        }
        self.store_durably(Some((&from.user, &from.device, msg_id)), deliveries).await.map_err(internal)
    }

    /// Appends, waits for the group commit, then wakes the recipients.
    async fn store_durably(
        &self,
        dedupe: Option<(&UserName, &DeviceId, &crate::ids::MsgId)>,
        deliveries: Vec<Delivery>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let appended = self.append(dedupe, deliveries)?;
        // The committer moves the durable marks and wakes the sessions (see store/commit.rs);
        // a duplicate waits too, as its original may still be in flight.
        self.store.committer.durable().await?;
        metrics::histogram!("tern_store_append_seconds").record(started.elapsed().as_secs_f64());
        if appended == Appended::Duplicate {
            metrics::counter!("tern_duplicates_dropped_total").increment(1);
        }
        Ok(())
    }

    /// Appends to the inbox (not yet durable), counting what goes out.
    fn append(
        &self,
        dedupe: Option<(&UserName, &DeviceId, &crate::ids::MsgId)>,
        deliveries: Vec<Delivery>,
    ) -> Result<Appended, StoreError> {
        for d in &deliveries {
            if let Some(body) = &d.down.body {
                count_out(body);
            }
        }
        self.store.inbox.append(dedupe, now_ms(), deliveries)
    }

    /// The roster lock; see the field's comment.
    fn roster_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is in sled, not behind the mutex: a poisoned guard protects nothing.
        self.roster_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells every session of `user` that its inbox is durable up to `seq`.
    pub fn wake(&self, user: &UserName, seq: Seq) {
        self.sessions.wake(user, seq);
    }

    /// Sends an ephemeral envelope to every online device of `user`.
    fn live(&self, user: &UserName, body: down::Body) {
        self.sessions.live(user, encode_live(body));
    }

    /// Sends an ephemeral envelope to one device.
    fn live_to_device(&self, id: &Identity, body: down::Body) {
        self.sessions.live_to_device(id, encode_live(body));
    }
}
