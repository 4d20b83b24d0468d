//! The per-peer schedule in simulated time.

use std::time::{Duration, Instant};

use tern_bridge::stream::NS_SERVER;
use tern_bridge::Element;

use super::{PeerSchedule, Pushed, Settings, MAX_QUEUED};
use crate::s2s::BounceReason;

const S: Duration = Duration::from_secs(1);

fn settings() -> Settings {
    Settings { send_timeout: 30 * S, retry_min: S, retry_max: 8 * S }
}

fn msg(id: &str) -> Element {
    Element::new("message", NS_SERVER).with_attr("id", id)
}

fn ids(stanzas: &[Element]) -> Vec<&str> {
    stanzas.iter().filter_map(|e| e.attr("id")).collect()
}

#[test]
fn backoff_doubles_from_min_to_max() {
    let s = settings();
    let delays: Vec<u64> = (1..=6).map(|n| s.backoff(n, 0).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
    assert_eq!(s.backoff(u32::MAX, 0), 8 * S); // no overflow however long it fails
}

#[test]
fn jitter_takes_off_at_most_a_quarter() {
    let s = settings();
    assert_eq!(s.backoff(3, 0), 4 * S);
    let most = s.backoff(3, u32::MAX);
    assert_eq!(most, 3 * S);
    let mid = s.backoff(3, u32::MAX / 2);
    assert!(mid > most && mid < 4 * S, "{mid:?}");
}

#[test]
fn the_first_stanza_connects_at_once_and_waits_for_the_stream() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(settings(), t0);
    assert!(!p.connect_due(t0, false), "nothing to send, nothing to do");
    assert!(matches!(p.push(msg("a"), t0), Pushed::Queued));
    assert!(p.connect_due(t0, false));
    p.connecting();
    assert!(matches!(p.push(msg("b"), t0), Pushed::Queued));
    assert!(!p.connect_due(t0, false), "one attempt at a time");
    assert_eq!(ids(&p.up()), ["a", "b"]);
    let Pushed::Send(c) = p.push(msg("c"), t0) else { panic!("an up stream takes stanzas directly") };
    assert_eq!(c.attr("id"), Some("c"));
    assert!(!p.has_queued());
}

#[test]
fn stanzas_wait_across_failed_attempts_and_go_out_when_the_peer_comes_up() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(settings(), t0);
    p.push(msg("a"), t0);
    p.connecting();
    assert_eq!(p.failed(BounceReason::NotFound, t0, 0), S);
    // In backoff: a new stanza waits, it does not start an attempt.
    p.push(msg("b"), t0 + S / 2);
    assert!(p.in_backoff(t0 + S / 2));
    assert!(!p.connect_due(t0 + S / 2, true));
    assert_eq!(p.poll_timeout(), Some(t0 + S));
    assert!(p.connect_due(t0 + S, false));
    p.connecting();
    assert_eq!(p.failed(BounceReason::NotFound, t0 + 2 * S, 0), 2 * S);
    assert!(!p.connect_due(t0 + 3 * S, false));
    assert!(p.connect_due(t0 + 4 * S, false));
    p.connecting();
    assert_eq!(p.expire(t0 + 5 * S), None);
    assert_eq!(ids(&p.up()), ["a", "b"]);
    // The backoff starts over after a stream was up.
    p.closed(t0 + 6 * S);
    p.push(msg("c"), t0 + 6 * S);
    p.connecting();
    assert_eq!(p.failed(BounceReason::NotFound, t0 + 6 * S, 0), S);
}

#[test]
fn a_stanza_bounces_as_not_found_after_the_send_timeout_of_refused_attempts() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(settings(), t0);
    p.push(msg("a"), t0);
    p.push(msg("b"), t0 + 10 * S);
    let mut now = t0;
    while now < t0 + 30 * S {
        if p.connect_due(now, false) {
            p.connecting();
            p.failed(BounceReason::NotFound, now, 0);
        }
        assert_eq!(p.expire(now), None);
        now = p.poll_timeout().expect("something is due");
    }
    assert_eq!(now, t0 + 30 * S);
    let (gone, why) = p.expire(now).expect("a waited 30 s");
    assert_eq!((ids(&gone), why), (vec!["a"], BounceReason::NotFound));
    assert_eq!(p.poll_timeout(), Some(t0 + 31 * S), "the next attempt");
    let (gone, _) = p.expire(t0 + 40 * S).expect("b waited 30 s");
    assert_eq!(ids(&gone), ["b"]);
}

#[test]
fn a_timed_out_attempt_makes_the_bounce_a_timeout() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(settings(), t0);
    p.push(msg("a"), t0);
    p.connecting();
    p.failed(BounceReason::Timeout, t0 + 20 * S, 0);
    p.connecting();
    p.failed(BounceReason::NotFound, t0 + 25 * S, 0);
    assert_eq!(p.expire(t0 + 30 * S).map(|(_, why)| why), Some(BounceReason::Timeout));
}

#[test]
fn an_attempt_still_under_way_at_the_send_timeout_bounces_as_a_timeout() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(settings(), t0);
    p.push(msg("a"), t0);
    p.connecting();
    assert_eq!(p.poll_timeout(), Some(t0 + 30 * S));
    let (gone, why) = p.expire(t0 + 30 * S).expect("expired");
    assert_eq!((ids(&gone), why), (vec!["a"], BounceReason::Timeout));
}

#[test]
fn requeued_stanzas_go_first_in_their_order() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(settings(), t0);
    p.push(msg("c"), t0);
    p.requeue(vec![msg("a"), msg("b")], t0);
    p.connecting();
    assert_eq!(ids(&p.up()), ["a", "b", "c"]);
}

#[test]
fn a_failing_peer_is_remembered_until_retry_max_then_forgotten() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(Settings { send_timeout: 2 * S, ..settings() }, t0);
    assert!(p.finished(t0));
    p.push(msg("a"), t0);
    p.connecting();
    p.failed(BounceReason::NotFound, t0, 0);
    assert!(!p.finished(t0));
    assert_eq!(p.expire(t0 + 2 * S).map(|(gone, _)| gone.len()), Some(1));
    assert!(!p.finished(t0 + 7 * S), "the backoff outlives the queue");
    assert_eq!(p.poll_timeout(), Some(t0 + 8 * S));
    assert!(p.finished(t0 + 8 * S));
}

#[test]
fn an_up_stream_is_never_finished() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(settings(), t0);
    p.push(msg("a"), t0);
    p.connecting();
    p.up();
    assert!(!p.finished(t0 + 1000 * S));
    assert_eq!(p.poll_timeout(), None);
    p.closed(t0 + 1000 * S);
    assert!(p.finished(t0 + 1000 * S));
}

#[test]
fn a_missing_domain_bounces_new_stanzas_for_retry_min_then_asks_again() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(settings(), t0);
    p.push(msg("a"), t0);
    for n in 0..4 {
        p.connecting();
        p.failed(BounceReason::NotFound, t0, 0);
        assert!(!p.is_missing(t0), "a refused connect ({n}) says nothing about the domain");
    }
    p.connecting();
    p.failed(BounceReason::NotFound, t0, 0);
    assert_eq!(ids(&p.missing(t0)), ["a"]);
    assert!(p.is_missing(t0 + S / 2) && !p.has_queued());
    assert!(!p.is_missing(t0 + S), "after retry_min the domain is looked up again");
    p.push(msg("b"), t0 + S);
    assert!(p.connect_due(t0 + S, false), "at once, not after the grown backoff");
    p.connecting();
    assert!(!p.is_missing(t0 + S));
}

#[test]
fn a_full_queue_hands_stanzas_back_to_bounce() {
    let t0 = Instant::now();
    let mut p = PeerSchedule::new(settings(), t0);
    for i in 0..MAX_QUEUED {
        assert!(matches!(p.push(msg(&i.to_string()), t0), Pushed::Queued));
    }
    let Pushed::Full(over) = p.push(msg("over"), t0) else { panic!("the queue is bounded") };
    assert_eq!(over.attr("id"), Some("over"));
}
