//! The delivery schedule of one peer domain, sans-IO: the stanzas waiting for a usable stream,
//! reconnect backoff (exponential, with jitter) and the send timeout after which a waiting
//! stanza bounces. `outbound.rs` drives it with `now`; nothing here touches a socket or clock.
//!
//! Stanzas wait here, not in the stream machine, until the stream is authenticated: so they
//! survive a failed attempt and are tried again on the next one, and the send timeout covers
//! the whole wait, across attempts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tern_bridge::Element;

use super::BounceReason;

/// Timing of delivery to a peer (from `[s2s]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a stanza may wait for a stream before it bounces.
    pub send_timeout: Duration,
    /// Delay after the first failed attempt.
    pub retry_min: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
}

impl Settings {
    /// The settings of `config`.
    pub fn from_config(config: &crate::config::S2sConfig) -> Settings {
        Settings {
            send_timeout: Duration::from_secs(config.send_timeout_secs),
            retry_min: Duration::from_secs(config.retry_min_secs),
            retry_max: Duration::from_secs(config.retry_max_secs),
        }
    }

    /// The wait after `failures` failed attempts in a row (at least one): `retry_min` doubled
    /// per earlier failure, capped at `retry_max`, less up to a quarter by `jitter` (any u32,
    /// uniformly random in use) so that peers failing together do not retry in step.
    pub fn backoff(&self, failures: u32, jitter: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let base = self.retry_min.saturating_mul(1u32 << doublings).min(self.retry_max);
        base - base.mul_f64(f64::from(jitter) / f64::from(u32::MAX) / 4.0)
    }
}

/// Stanzas one peer may have waiting for its stream; beyond that they bounce at once, so a
/// dead peer costs bounded memory however much is sent to it.
pub const MAX_QUEUED: usize = 10_000;

/// What became of a pushed stanza.
#[derive(Debug)]
pub enum Pushed {
    /// The stream is up: write it now.
    Send(Element),
    /// It waits for the stream.
    Queued,
    /// The queue is full: bounce it.
    Full(Element),
}

/// The state of the link to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No stream; the next attempt may start at `retry_at`.
    Down { retry_at: Instant },
    /// An attempt is under way: resolving, connecting or negotiating.
    Connecting,
    /// The stream is authenticated: stanzas go straight to it.
    Up,
}

/// One peer domain's queue and retry state.
#[derive(Debug)]
pub struct PeerSchedule {
    settings: Settings,
    link: Link,
    /// Stanzas waiting for the stream, with when they started waiting, oldest first.
    queue: VecDeque<(Instant, Element)>,
    /// Failed attempts since the stream was last up.
    failures: u32,
    /// Whether one of those attempts timed out (then the bounce says so).
    timed_out: bool,
    /// Keep the backoff state (and so the task) until then, even with nothing to send, so a
    /// failing peer is not retried at once by the next stanza.
    linger_until: Instant,
    /// The last attempt found that the domain has no server at all (DNS said so).
    missing: bool,
}

impl PeerSchedule {
    /// A peer never tried yet: the first stanza may connect at once.
    pub fn new(settings: Settings, now: Instant) -> Self {
        PeerSchedule {
            settings,
            link: Link::Down { retry_at: now },
            queue: VecDeque::new(),
            failures: 0,
            timed_out: false,
            linger_until: now,
            missing: false,
        }
    }

    /// A stanza to send: back to the caller to write at once when the stream is up, else
    /// queued, unless [`MAX_QUEUED`] already wait.
    pub fn push(&mut self, stanza: Element, now: Instant) -> Pushed {
        if self.link == Link::Up {
            return Pushed::Send(stanza);
        }
        if self.queue.len() >= MAX_QUEUED {
            return Pushed::Full(stanza);
        }
        self.queue.push_back((now, stanza));
        Pushed::Queued
    }

    /// Stanzas a stream gave back unsent: they wait again, ahead of the rest.
    pub fn requeue(&mut self, stanzas: Vec<Element>, now: Instant) {
        for stanza in stanzas.into_iter().rev() {
            self.queue.push_front((now, stanza));
        }
    }

    /// Whether stanzas are waiting.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether the peer is waiting out a backoff after failures (no attempt may start now).
    pub fn in_backoff(&self, now: Instant) -> bool {
        matches!(self.link, Link::Down { retry_at } if retry_at > now)
    }

    /// Whether an attempt should start now; `wanted` says something other than a queued
    /// stanza needs the stream (a dialback verification).
    pub fn connect_due(&self, now: Instant, wanted: bool) -> bool {
        matches!(self.link, Link::Down { retry_at } if retry_at <= now) && (wanted || self.has_queued())
    }

    /// An attempt starts.
    pub fn connecting(&mut self) {
        self.link = Link::Connecting;
        self.missing = false;
    }

    /// The stream is authenticated: the backoff resets and every queued stanza is returned, in
    /// order, to be written now.
    pub fn up(&mut self) -> Vec<Element> {
        self.link = Link::Up;
        self.failures = 0;
        self.timed_out = false;
        self.queue.drain(..).map(|(_, stanza)| stanza).collect()
    }

    /// The attempt (or the stream before it was up) failed: wait before the next one.
    /// `jitter` is a random u32.
    pub fn failed(&mut self, reason: BounceReason, now: Instant, jitter: u32) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.timed_out |= reason == BounceReason::Timeout;
        let delay = self.settings.backoff(self.failures, jitter);
        self.link = Link::Down { retry_at: now + delay };
        self.linger_until = now + self.settings.retry_max.max(delay);
        delay
    }

    /// A stream that was up ended: the next stanza may reconnect at once.
    pub fn closed(&mut self, now: Instant) {
        self.link = Link::Down { retry_at: now };
        self.linger_until = now;
    }

    /// The domain decidedly has no server (after [`failed`](Self::failed)): everything
    /// queued comes back to bounce now, and so does every stanza pushed for `retry_min`
    /// (see [`is_missing`](Self::is_missing)): there is nothing to wait for. Then the next
    /// stanza asks DNS again, however long the backoff had grown: the answer is cheap and
    /// costs the (nonexistent) peer nothing.
    pub fn missing(&mut self, now: Instant) -> Vec<Element> {
        self.missing = true;
        self.link = Link::Down { retry_at: now + self.settings.retry_min };
        self.queue.drain(..).map(|(_, stanza)| stanza).collect()
    }

    /// Whether DNS said, within the last `retry_min`, that the domain has no server: new
    /// stanzas bounce at once instead of waiting.
    pub fn is_missing(&self, now: Instant) -> bool {
        self.missing && self.in_backoff(now)
    }

    /// The stanzas that have waited `send_timeout` by `now`, and how to bounce them: as a
    /// timeout if an attempt timed out or one is still under way, else as not found.
    pub fn expire(&mut self, now: Instant) -> Option<(Vec<Element>, BounceReason)> {
        let mut expired = Vec::new();
        while let Some((since, _)) = self.queue.front() {
            if *since + self.settings.send_timeout > now {
                break;
            }
            if let Some((_, stanza)) = self.queue.pop_front() {
                expired.push(stanza);
            }
        }
        if expired.is_empty() {
            return None;
        }
        let timed_out = self.timed_out || self.link == Link::Connecting;
        Some((expired, if timed_out { BounceReason::Timeout } else { BounceReason::NotFound }))
    }

    /// When the driver must next call [`expire`](Self::expire) or check
    /// [`connect_due`](Self::connect_due) / [`finished`](Self::finished).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let oldest = self.queue.front().map(|(since, _)| *since + self.settings.send_timeout);
        let retry = match self.link {
            Link::Down { retry_at } if self.has_queued() => Some(retry_at),
            Link::Down { .. } => Some(self.linger_until),
            _ => None,
        };
        [oldest, retry].into_iter().flatten().min()
    }

    /// Whether nothing is left to do for this peer: no stream, nothing queued, no backoff to
    /// remember.
    pub fn finished(&self, now: Instant) -> bool {
        matches!(self.link, Link::Down { .. }) && self.queue.is_empty() && now >= self.linger_until
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
