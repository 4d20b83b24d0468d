//! One phase of a load scenario, whatever the systems: senders (phones on tern, MQTT clients
//! of mosquitto, or XMPP clients) each send their pair's messages to a recipient (on the same
//! server, or an XMPP client elsewhere), through counting proxies in the `wire` phase; then the
//! drivers' counts, the latency histogram, bytes and CPU become one [`PhaseResult`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tern_bridge::Jid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::drivers::{Ctx, Note, PeerName, Schedule};
use super::mqtt::{self, Login, Sends};
use super::{chat_up_by_ref, user_name, Phase, Settings, DEVICE, PASSWORD, SETTLE};
use crate::brokers::{self, Broker, Endpoint};
use crate::prosody::Prosody;
use crate::proxy::{Proxy, Snapshot};
use crate::report::{new_histogram, round, Bytes, Latency, PhaseResult};
use crate::xmpp;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// Phones on tern (MQTT, `Up`/`Down` envelopes).
    Tern,
    /// Raw MQTT pub/sub on mosquitto.
    Mosquitto,
    /// XMPP c2s clients (on Prosody); only ever senders or recipients of the XMPP drivers.
    Xmpp,
}

/// An XMPP client account of the bench.
fn xmpp_account(addr: std::net::SocketAddr, user: &str, domain: &str) -> anyhow::Result<xmpp::Account> {
    Ok(xmpp::Account {
        addr,
        jid: Jid::new(Some(user), domain, None)?,
        password: PASSWORD.to_owned(),
        resource: DEVICE.to_owned(),
    })
}

/// Where a phase's recipients are.
#[derive(Clone, Copy)]
pub(crate) enum Recipients<'a> {
    /// MQTT clients of the senders' broker.
    Local,
    /// XMPP clients of this Prosody, which tern reaches over s2s (or the senders' own server);
    /// they send receipts in phases with receipts.
    Xmpp(&'a Prosody),
    /// Phones on this tern, whose domain is `domain`, which XMPP senders reach over s2s; they
    /// send receipts in phases with receipts.
    Phones { tern: &'a Broker, domain: &'a str },
}

/// Runs one phase: `kind` senders on `broker` (`domain`), each sending to its recipient.
pub(crate) async fn run_phase(
    kind: Kind,
    broker: Endpoint,
    recipients: Recipients<'_>,
    domain: &str,
    s: &Settings,
    phase: Phase,
) -> anyhow::Result<PhaseResult> {
    let pairs = s.pairs;
    let per_pair = phase.messages / pairs as u64;
    let (recipient_broker, recipient_domain) = match recipients {
        Recipients::Local => (broker, domain),
        Recipients::Xmpp(p) => (p.broker.endpoint(), p.domain.as_str()),
        Recipients::Phones { tern, domain } => (tern.endpoint(), domain),
    };
    let xmpp_recipients = matches!(recipients, Recipients::Xmpp(_));
    // The recipients' server's CPU is reported apart when it is not the senders' server.
    let peer = Some(recipient_broker).filter(|b| b.addr != broker.addr);
    // The MQTT drivers' protocol: the senders', or with XMPP senders the phones'.
    let mqtt_kind = match recipients {
        Recipients::Phones { .. } => Kind::Tern,
        _ => kind,
    };
    let receipts = phase.receipts && !matches!(recipients, Recipients::Local);
    let ctx = Arc::new(Ctx::new(mqtt_kind, receipts));
    let recipient_server = recipient_broker.addr;
    let (sender_proxy, recipient_proxy) = if phase.proxy {
        (Some(Proxy::start(broker.addr).await?), Some(Proxy::start(recipient_server).await?))
    } else {
        (None, None)
    };
    let sender_addr = sender_proxy.as_ref().map_or(broker.addr, |p| p.addr);
    let recipient_addr = recipient_proxy.as_ref().map_or(recipient_server, |p| p.addr);
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);

    // Setup: connect everyone (tern: password login, then the token arrives; mosquitto: subscribe).
    let setup_started = Instant::now();
    let mut senders = Vec::new();
    let mut recipient_tasks = Vec::new();
    let mut schedules = Vec::new();
    // tern phones learn their peer's ref during the setup; mosquitto's payload gets a ref of
    // the same size, so both carry the same bytes.
    let peer_name = |contact: String| match mqtt_kind {
        Kind::Tern => PeerName { contact: Some(contact), ..Default::default() },
        Kind::Mosquitto | Kind::Xmpp => {
            let name = PeerName::default();
            let _ = name.learnt.set(1);
            name
        }
    };
    for i in 0..pairs {
        let sender_bare = format!("{}@{domain}", user_name(phase.tag, 's', i));
        let expected_peer = format!("{sender_bare}/{DEVICE}");
        let recipient = user_name(phase.tag, 'r', i);
        recipient_tasks.push(if xmpp_recipients {
            tokio::spawn(xmpp::drivers::recipient_driver(
                ctx.clone(),
                xmpp_account(recipient_addr, &recipient, recipient_domain)?,
                per_pair,
                expected_peer,
                notes_tx.clone(),
                stop_rx.clone(),
            ))
        } else {
            let login = Login { tag: phase.tag, role: 'r', pair: i, addr: recipient_addr };
            tokio::spawn(mqtt::recipient(
                ctx.clone(),
                login,
                s.inflight_per_sender,
                per_pair,
                expected_peer,
                peer_name(sender_bare),
                notes_tx.clone(),
                stop_rx.clone(),
            ))
        });
        let (tx, rx) = oneshot::channel();
        schedules.push(tx);
        if kind == Kind::Xmpp {
            senders.push(tokio::spawn(xmpp::drivers::sender_driver(
                ctx.clone(),
                xmpp_account(sender_addr, &user_name(phase.tag, 's', i), domain)?,
                Jid::new(Some(&recipient), recipient_domain, None)?,
                per_pair,
                s.inflight_per_sender,
                rx,
                notes_tx.clone(),
                stop_rx.clone(),
            )));
            continue;
        }
        let topic = match kind {
            Kind::Tern => "u".to_owned(),
            Kind::Mosquitto | Kind::Xmpp => mqtt::pair_topic(i),
        };
        let peer = format!("{recipient}@{recipient_domain}");
        let sends = Sends { n: per_pair, topic, peer: peer.clone(), window: s.inflight_per_sender };
        senders.push(tokio::spawn(mqtt::sender(
            ctx.clone(),
            Login { tag: phase.tag, role: 's', pair: i, addr: sender_addr },
            sends,
            peer_name(peer),
            rx,
            notes_tx.clone(),
            stop_rx.clone(),
        )));
    }
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = 0;
    while ready < 2 * pairs {
        match tokio::time::timeout_at(setup_deadline, notes.recv()).await {
            Ok(Some(Note::Ready)) => ready += 1,
            Ok(Some(Note::SetupFailed(e))) => {
                let _ = stop_tx.send(true);
                bail!("{kind:?} {} phase: a client failed to set up: {e}", phase.name);
            }
            Ok(_) => {}
            Err(_) => {
                let _ = stop_tx.send(true);
                bail!(
                    "{kind:?} {} phase: only {ready} of {} clients ready after 60 s",
                    phase.name,
                    2 * pairs
                );
            }
        }
    }
    let setup_s = setup_started.elapsed().as_secs_f64();
    // Let whatever the broker sends after a login (tern: presence) arrive and be acknowledged
    // before the counters are read: wait for SETTLE, then until they stand still for 50 ms.
    let snap = |p: &Option<Proxy>| p.as_ref().map(|p| p.snapshot()).unwrap_or_default();
    tokio::time::sleep(SETTLE).await;
    let quiet_deadline = Instant::now() + Duration::from_secs(3);
    let (mut s0, mut r0) = (snap(&sender_proxy), snap(&recipient_proxy));
    while Instant::now() < quiet_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (s, r) = (snap(&sender_proxy), snap(&recipient_proxy));
        if (s.up, s.down, r.up, r.down) == (s0.up, s0.down, r0.up, r0.down) {
            break;
        }
        (s0, r0) = (s, r);
    }
    ctx.running.store(true, std::sync::atomic::Ordering::SeqCst);
    let cpu0 = broker.cpu_ms();
    let peer_cpu0 = peer.and_then(|p| p.cpu_ms());
    let own0 = brokers::cpu_ms("/proc/self/stat");

    // Load.
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = start + Duration::from_secs(s.timeout_s);
    let rate_per_pair = phase.rate.map(|r| r / pairs as f64);
    for (i, tx) in schedules.into_iter().enumerate() {
        // Spread the senders evenly over one period of the total rate.
        let offset = phase.rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(i as f64 / r));
        let _ = tx.send(Schedule { start, offset, rate: rate_per_pair, deadline });
    }
    let (mut senders_done, mut recipients_done) = (0, 0);
    let mut progress = Progress::new(kind, recipients, phase, per_pair * pairs as u64);
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    while senders_done < pairs || recipients_done < pairs {
        tokio::select! {
            note = tokio::time::timeout_at(deadline, notes.recv()) => match note {
                Ok(Some(Note::SenderDone)) => senders_done += 1,
                Ok(Some(Note::RecipientDone)) => recipients_done += 1,
                Ok(Some(Note::Failed)) => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            _ = tick.tick() => progress.show(&ctx, start),
        }
    }
    progress.done();
    tokio::time::sleep(SETTLE).await;
    let (s1, r1) = (snap(&sender_proxy), snap(&recipient_proxy));
    let cpu1 = broker.cpu_ms();
    let peer_cpu1 = peer.and_then(|p| p.cpu_ms());
    let own1 = brokers::cpu_ms("/proc/self/stat");
    let _ = stop_tx.send(true);

    // Collect.
    let mut res = PhaseResult {
        phase: phase.name.into(),
        messages: per_pair * pairs as u64,
        setup_s: round(setup_s, 3),
        target_rate: phase.rate,
        ..Default::default()
    };
    let mut hist = new_histogram();
    let mut last_delivery: Option<Instant> = None;
    for r in recipient_tasks {
        let st = r.await?;
        res.delivered += st.delivered;
        res.duplicated += st.duplicated;
        res.unexpected += st.unexpected;
        res.unexpected_samples.extend(st.unexpected_samples);
        res.setup_downs += st.setup_downs;
        res.setup_samples.extend(st.setup_samples);
        res.wrong_peer += st.wrong_peer;
        res.seq_regressions += st.seq_regressions;
        res.down_payload_bytes = res.down_payload_bytes.max(st.down_payload_bytes);
        res.errors.extend(st.errors);
        hist.add(&st.hist)?;
        last_delivery = last_delivery.max(st.last_delivery);
    }
    for snd in senders {
        let st = snd.await?;
        res.acked += st.acked;
        res.published += st.published;
        res.late_sends += st.late;
        res.up_payload_bytes = res.up_payload_bytes.max(st.up_payload_bytes);
        if ctx.receipts {
            *res.receipts.get_or_insert(0) += st.receipts;
        }
        res.error_downs += st.error_downs;
        res.unexpected += st.unexpected;
        res.unexpected_samples.extend(st.unexpected_samples);
        res.setup_downs += st.setup_downs;
        res.setup_samples.extend(st.setup_samples);
        res.errors.extend(st.errors);
    }
    res.lost = res.published.saturating_sub(res.delivered);
    res.unsent = res.messages - res.published;
    res.latency = Latency::of(&hist);
    if kind != Kind::Xmpp {
        res.up_payload_bytes = chat_up_by_ref(0, 1, 0).len();
    }
    if let Some(last) = last_delivery {
        res.elapsed_s = round(last.saturating_duration_since(start).as_secs_f64(), 4);
        if res.elapsed_s > 0.0 {
            res.msgs_per_s = round(res.delivered as f64 / res.elapsed_s, 1);
        }
    }
    if phase.proxy && res.delivered > 0 {
        let (sd, rd): (Snapshot, Snapshot) = (s1.since(s0), r1.since(r0));
        let n = res.delivered as f64;
        let total = sd.up + sd.down + rd.up + rd.down;
        res.bytes = Some(Bytes {
            sender_up: round(sd.up as f64 / n, 2),
            sender_down: round(sd.down as f64 / n, 2),
            recipient_down: round(rd.down as f64 / n, 2),
            recipient_up: round(rd.up as f64 / n, 2),
            sender_link: round((sd.up + sd.down) as f64 / n, 2),
            recipient_link: round((rd.up + rd.down) as f64 / n, 2),
            total: round(total as f64 / n, 2),
            total_bytes: total,
            setup_per_client: round((s0.up + s0.down + r0.up + r0.down) as f64 / (2 * pairs) as f64, 1),
        });
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        res.broker_cpu_ms = Some(round(b - a, 1));
        if res.delivered > 0 {
            res.broker_cpu_us_per_msg = Some(round((b - a) * 1000.0 / res.delivered as f64, 2));
        }
    }
    if let (Some(a), Some(b)) = (peer_cpu0, peer_cpu1) {
        if res.delivered > 0 {
            res.peer_cpu_us_per_msg = Some(round((b - a) * 1000.0 / res.delivered as f64, 2));
        }
    }
    if let (Some(a), Some(b)) = (own0, own1) {
        if res.delivered > 0 {
            res.client_cpu_us_per_msg = Some(round((b - a) * 1000.0 / res.delivered as f64, 2));
        }
    }
    drop(sender_proxy);
    drop(recipient_proxy);
    eprintln!(
        "tern-bench: {:<22} delivered {}/{} in {:.2} s ({:.0}/s), p50 {} µs, p99 {} µs, lost {}, dup {}",
        progress.label,
        res.delivered,
        res.messages,
        res.elapsed_s,
        res.msgs_per_s,
        res.latency.p50_us,
        res.latency.p99_us,
        res.lost,
        res.duplicated
    );
    Ok(res)
}

/// The progress line of a running phase on stderr: delivered so far and the rate, once a second
/// (rewritten in place on a terminal, one line per second otherwise).
struct Progress {
    label: String,
    total: u64,
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new(kind: Kind, recipients: Recipients, phase: Phase, total: u64) -> Progress {
        let system = match recipients {
            Recipients::Local => format!("{kind:?}").to_lowercase(),
            Recipients::Xmpp(_) if kind == Kind::Tern => "federation".into(),
            Recipients::Phones { .. } => "federation".into(),
            Recipients::Xmpp(_) => "prosody".into(),
        };
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Progress { label: format!("{system} {}", phase.name), total, tty, shown: false }
    }

    fn show(&mut self, ctx: &Ctx, start: Instant) {
        let n = ctx.delivered.load(std::sync::atomic::Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        let line = format!(
            "tern-bench: {:<22} {n:>8}/{} delivered, {:>7.0} msgs/s, {secs:>5.1} s",
            self.label,
            self.total,
            n as f64 / secs.max(1e-3)
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        self.shown = true;
    }

    fn done(&self) {
        if self.tty && self.shown {
            eprintln!();
        }
    }
}
