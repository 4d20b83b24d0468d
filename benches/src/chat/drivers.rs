//! What the per-connection tasks of a chat phase share (MQTT ones in `mqtt.rs`, XMPP ones in
//! `xmpp/drivers.rs`): the phase context, their notes to the phase, their counts, the schedule.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use prost::Message;
use tern_schemas::num_id;
use tern_schemas::v1::{down, receipt, up, Hello, Receipt, RosterItem, Up};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::mqtt::SETUP_PACKET_ID;
use super::{parse_message_id, Kind};
use crate::raw_mqtt::put_publish;
use crate::report::new_histogram;

pub(crate) struct Ctx {
    pub(crate) kind: Kind,
    /// Set when the load starts: PUBLISHes before that are part of the setup.
    pub(crate) running: std::sync::atomic::AtomicBool,
    /// Time origin of the timestamps in the bodies.
    pub(crate) epoch: Instant,
    /// Whether senders wait for a delivery receipt of every message (XMPP recipients send them).
    pub(crate) receipts: bool,
    /// Messages delivered so far in this phase, for the progress line.
    pub(crate) delivered: AtomicU64,
}

impl Ctx {
    /// A context for one phase, starting now.
    pub(crate) fn new(kind: Kind, receipts: bool) -> Ctx {
        Ctx { kind, running: false.into(), epoch: Instant::now(), receipts, delivered: AtomicU64::new(0) }
    }

    pub(crate) fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

pub(crate) fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

pub(crate) enum Note {
    Ready,
    SetupFailed(String),
    /// A connection broke during the load: stop waiting for the rest.
    Failed,
    SenderDone,
    RecipientDone,
}

#[derive(Default)]
pub(crate) struct SenderStats {
    pub(crate) acked: u64,
    /// Delivery receipts that came back (XMPP recipients only).
    pub(crate) receipts: u64,
    /// Messages sent and sends behind schedule, for senders that publish themselves (XMPP).
    pub(crate) published: u64,
    pub(crate) late: u64,
    /// Length of one message as sent, for senders that publish themselves (XMPP).
    pub(crate) up_payload_bytes: usize,
    pub(crate) error_downs: u64,
    pub(crate) unexpected: u64,
    pub(crate) unexpected_samples: Vec<String>,
    pub(crate) setup_downs: u64,
    pub(crate) setup_samples: Vec<String>,
    pub(crate) errors: Vec<String>,
}

/// Keeps a short description of the first few unexpected envelopes.
pub(crate) fn note_unexpected<T: std::fmt::Debug>(samples: &mut Vec<String>, topic: &str, what: &T) {
    if samples.len() < 3 {
        let mut s = format!("{topic}: {what:?}");
        s.truncate(200);
        samples.push(s);
    }
}

pub(crate) struct RecipientStats {
    seen: Vec<u8>,
    pub(crate) delivered: u64,
    pub(crate) duplicated: u64,
    pub(crate) unexpected: u64,
    pub(crate) wrong_peer: u64,
    pub(crate) seq_regressions: u64,
    pub(crate) last_delivery: Option<Instant>,
    pub(crate) hist: Histogram<u64>,
    pub(crate) down_payload_bytes: usize,
    pub(crate) unexpected_samples: Vec<String>,
    pub(crate) setup_downs: u64,
    pub(crate) setup_samples: Vec<String>,
    pub(crate) errors: Vec<String>,
}

impl RecipientStats {
    /// Nothing received yet, of the `expect` messages numbered 0..expect.
    pub(crate) fn new(expect: u64) -> RecipientStats {
        RecipientStats {
            seen: vec![0; expect as usize],
            delivered: 0,
            duplicated: 0,
            unexpected: 0,
            wrong_peer: 0,
            seq_regressions: 0,
            last_delivery: None,
            hist: new_histogram(),
            down_payload_bytes: 0,
            unexpected_samples: Vec::new(),
            setup_downs: 0,
            setup_samples: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Counts one received chat message (its id and body, the send time), whatever the
    /// protocol it came by: first copies into the latency histogram, others as duplicates.
    pub(crate) fn deliver(
        &mut self,
        ctx: &Ctx,
        id: &str,
        body: &str,
        payload_len: usize,
        notes: &mpsc::UnboundedSender<Note>,
    ) {
        let now = Instant::now();
        let now_us = now.duration_since(ctx.epoch).as_micros() as u64;
        let expect = self.seen.len() as u64;
        match (parse_message_id(id), body.parse::<u64>()) {
            (Some(k), Ok(sent_us)) if k < expect => {
                self.down_payload_bytes = payload_len;
                let slot = &mut self.seen[k as usize];
                *slot = slot.saturating_add(1);
                if *slot == 1 {
                    self.delivered += 1;
                    self.last_delivery = Some(now);
                    self.hist.saturating_record(now_us.saturating_sub(sent_us).max(1));
                    ctx.delivered.fetch_add(1, Ordering::Relaxed);
                    if self.delivered == expect {
                        let _ = notes.send(Note::RecipientDone);
                    }
                } else {
                    self.duplicated += 1;
                }
            }
            _ => self.unexpected += 1,
        }
    }
}

/// A broken connection ends its driver: before the client was ready it is a setup failure,
/// after that an error of the phase (and the phase stops waiting).
pub(crate) fn connection_failed(
    notes: &mpsc::UnboundedSender<Note>,
    errors: &mut Vec<String>,
    ready: bool,
    msg: String,
) {
    if !ready {
        let _ = notes.send(Note::SetupFailed(msg));
    } else {
        errors.push(msg);
        let _ = notes.send(Note::Failed);
    }
}

/// How a phone names its peer. On tern, during the setup the phone sends `Hello{peer_refs}` and
/// puts `contact` (a bare JID) on its roster; the roster push carries the contact's peer ref,
/// which goes into `learnt` (see docs/PROTOCOL.md "Peer refs"). Elsewhere `contact` is `None`.
#[derive(Clone, Default)]
pub(crate) struct PeerName {
    pub(crate) contact: Option<String>,
    pub(crate) learnt: Arc<OnceLock<u32>>,
}

impl PeerName {
    /// Appends the Hello and the roster set to `out`; the caller then waits for
    /// [`PeerName::learn`].
    pub(crate) fn start(&self, out: &mut Vec<u8>) {
        let Some(contact) = &self.contact else { return };
        let hello = Up {
            id: String::new(),
            body: Some(up::Body::Hello(Hello { peer_refs: true, roster_ver: 0, numeric_ids: true })),
            ..Default::default()
        };
        let item = RosterItem { jid: contact.clone(), ..Default::default() };
        let set = Up { id: "roster".into(), body: Some(up::Body::RosterSet(item)), ..Default::default() };
        put_publish(out, "u", None, &hello.encode_to_vec());
        put_publish(out, "u", Some(SETUP_PACKET_ID), &set.encode_to_vec());
    }

    /// True once `body` (a roster push) told the phone its contact's ref.
    pub(crate) fn learn(&self, body: &Option<down::Body>) -> bool {
        let (Some(contact), Some(down::Body::Roster(r))) = (&self.contact, body) else { return false };
        let Some(item) = r.items.iter().find(|i| &i.jid == contact && i.peer_ref != 0) else { return false };
        // A ref never changes, so a second push with a different one would be a server bug.
        *self.learnt.get_or_init(|| item.peer_ref) == item.peer_ref
    }

    /// Whether the phone is still waiting for its contact's ref.
    pub(crate) fn waiting(&self) -> bool {
        self.contact.is_some() && self.learnt.get().is_none()
    }
}

/// The delivery receipt a phone sends for chat message `id` from `peer` (or `peer_ref`).
pub(crate) fn receipt_up(id: &str, peer: String, peer_ref: u32) -> Vec<u8> {
    let up_id = format!("r{id}");
    // A phone sends ids that are numbers as numbers (docs/PROTOCOL.md "Numeric ids").
    let (mut id, mut num_id) = (id.to_owned(), 0);
    num_id::compact(&mut id, &mut num_id);
    let receipt =
        Receipt { peer, peer_ref, id, num_id, kind: receipt::Kind::Delivered as i32, ..Default::default() };
    Up { id: up_id, body: Some(up::Body::Receipt(receipt)), ..Default::default() }.encode_to_vec()
}

/// When one sender sends: flat out from `start`, or at `rate` per second from `start + offset`;
/// nothing after `deadline`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) start: Instant,
    pub(crate) offset: Duration,
    pub(crate) rate: Option<f64>,
    pub(crate) deadline: Instant,
}

impl Schedule {
    /// When message `k` is due; `None` past the deadline.
    pub(crate) fn due(&self, k: u64) -> Option<Instant> {
        let at = match self.rate {
            Some(r) => self.start + self.offset + Duration::from_secs_f64(k as f64 / r),
            None => self.start,
        };
        (at <= self.deadline).then_some(at)
    }

    /// Whether a message due `at` and sent now left more than 5 ms behind schedule (only a
    /// paced sender can be late).
    pub(crate) fn late(&self, at: Instant) -> bool {
        self.rate.is_some() && Instant::now().duration_since(at) > Duration::from_millis(5)
    }
}
