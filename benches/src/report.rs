//! Results of the load scenarios (chat, federation): what each phase measured, the ratios to the
//! reference run, the table, and the JSON.

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::chat::Settings;

/// The latency histogram every scenario records into: 1 µs to 1 h, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low).
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Serialize, Debug, Default, Clone)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    pub(crate) mean_us: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

#[derive(Serialize, Debug, Default, Clone)]
pub(crate) struct Bytes {
    /// Sender → broker (the PUBLISHes), bytes per delivered message.
    pub(crate) sender_up: f64,
    /// Broker → sender (the PUBACKs).
    pub(crate) sender_down: f64,
    /// Broker → recipient (the delivered PUBLISHes).
    pub(crate) recipient_down: f64,
    /// Recipient → broker (the PUBACKs).
    pub(crate) recipient_up: f64,
    /// The sender's link, both directions (a phone's MQTT link in `federation`).
    pub(crate) sender_link: f64,
    /// The recipient's link, both directions (an XMPP client's c2s link in `federation`).
    pub(crate) recipient_link: f64,
    /// All four legs.
    pub(crate) total: f64,
    /// The same, not divided: total bytes counted.
    pub(crate) total_bytes: u64,
    /// Setup, per client, both directions: CONNECT/CONNACK and whatever follows before the
    /// load starts (tern: the token and presence Downs and their PUBACKs; mosquitto:
    /// SUBSCRIBE/SUBACK on recipients). What a phone pays on every (re)connect.
    pub(crate) setup_per_client: f64,
}

#[derive(Serialize, Debug, Default, Clone)]
pub(crate) struct PhaseResult {
    pub(crate) phase: String,
    pub(crate) messages: u64,
    pub(crate) published: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    /// Published (handed to the client library) but not delivered within the time cap.
    pub(crate) lost: u64,
    /// Not even published within the time cap (the load generator or the broker was too slow).
    pub(crate) unsent: u64,
    pub(crate) duplicated: u64,
    /// PUBLISHes to a client that were not one of this phase's chat messages (after setup).
    pub(crate) unexpected: u64,
    /// A few of them, described.
    pub(crate) unexpected_samples: Vec<String>,
    /// PUBLISHes to clients during the setup, other than tern's `Down{token}` (not counted in the bytes).
    pub(crate) setup_downs: u64,
    pub(crate) setup_samples: Vec<String>,
    /// tern only: `Down.chat.peer` other than the sender's full JID.
    pub(crate) wrong_peer: u64,
    /// tern only: a `Down.seq` not above the previous one for the same recipient.
    pub(crate) seq_regressions: u64,
    /// tern only: `Down{error}` received by senders.
    pub(crate) error_downs: u64,
    /// Delivery receipts back at the senders (recipients that send them: XMPP clients).
    pub(crate) receipts: Option<u64>,
    pub(crate) errors: Vec<String>,
    /// Connect (+ login / subscribe) of all clients, seconds.
    pub(crate) setup_s: f64,
    /// From the first publish to the last delivery, seconds.
    pub(crate) elapsed_s: f64,
    pub(crate) msgs_per_s: f64,
    pub(crate) target_rate: Option<f64>,
    /// Sends more than 5 ms behind schedule (latency phase): the load generator fell behind.
    pub(crate) late_sends: u64,
    pub(crate) latency: Latency,
    pub(crate) bytes: Option<Bytes>,
    /// Payload of one sender PUBLISH and of one delivered PUBLISH, bytes.
    pub(crate) up_payload_bytes: usize,
    pub(crate) down_payload_bytes: usize,
    pub(crate) broker_cpu_ms: Option<f64>,
    pub(crate) broker_cpu_us_per_msg: Option<f64>,
    /// `federation`: CPU of the XMPP server (Prosody) per message.
    pub(crate) peer_cpu_us_per_msg: Option<f64>,
    /// CPU of this load generator (all clients, proxies included), to see whether it was the limit.
    pub(crate) client_cpu_us_per_msg: Option<f64>,
}

#[derive(Serialize, Debug, Default)]
pub(crate) struct BrokerResult {
    pub(crate) broker: String,
    pub(crate) version: String,
    /// Creating the users (tern: one Argon2 hash each), seconds.
    pub(crate) user_setup_s: Option<f64>,
    pub(crate) phases: Vec<PhaseResult>,
    pub(crate) rss_kib_end: Option<u64>,
}

impl BrokerResult {
    fn phase(&self, name: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.phase == name)
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Ratios {
    bytes_per_msg: Option<f64>,
    throughput: Option<f64>,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    cpu_per_msg: Option<f64>,
}

#[derive(Serialize, Debug)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) settings: Settings,
    pub(crate) cpus: usize,
    /// /proc/loadavg before and after: other work on the machine skews everything here.
    pub(crate) loadavg_before: String,
    pub(crate) loadavg_after: String,
    pub(crate) tern: BrokerResult,
    /// The same workload on the reference server (mosquitto for `chat`).
    pub(crate) reference: Option<BrokerResult>,
    /// tern / reference.
    pub(crate) ratio_tern_over_reference: Option<Ratios>,
    pub(crate) notes: Vec<&'static str>,
}

impl Report {
    /// The report of a finished run; `tern` is the system under test, `reference` the same
    /// workload elsewhere.
    pub(crate) fn new(
        scenario: &'static str,
        settings: Settings,
        loadavg_before: String,
        tern: BrokerResult,
        reference: Option<BrokerResult>,
        notes: Vec<&'static str>,
    ) -> Report {
        Report {
            scenario,
            settings,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            loadavg_before,
            loadavg_after: crate::chat::loadavg(),
            ratio_tern_over_reference: reference.as_ref().map(|m| ratios(&tern, m)),
            tern,
            reference,
            notes,
        }
    }

    /// Whether every message arrived exactly once, was acknowledged (and receipted where
    /// recipients send receipts), and no client saw an error.
    pub(crate) fn clean(&self) -> bool {
        self.tern.phases.iter().chain(self.reference.iter().flat_map(|m| m.phases.iter())).all(|p| {
            p.lost == 0
                && p.unsent == 0
                && p.duplicated == 0
                && p.errors.is_empty()
                && p.wrong_peer == 0
                && p.error_downs == 0
                && p.receipts.is_none_or(|r| r == p.delivered)
        })
    }
}

/// Prints the table, writes the JSON, removes the scratch dir of a clean run; fails if the run
/// was not clean.
pub(crate) fn finish(report: &Report, json: &Path, scratch: crate::chat::Scratch) -> anyhow::Result<()> {
    print_table(report);
    if let Some(dir) = json.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    println!("\nJSON: {}", json.display());
    let clean = report.clean();
    if scratch.temporary && !scratch.keep && clean {
        let _ = std::fs::remove_dir_all(&scratch.dir);
    } else {
        eprintln!("tern-bench {}: scratch dir kept: {}", scratch.scenario, scratch.dir.display());
    }
    anyhow::ensure!(
        clean,
        "messages were lost, unsent, duplicated or not receipted, or clients saw errors (see the table and the JSON)"
    );
    Ok(())
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round(a / b, 3)),
        _ => None,
    }
}

struct Figures {
    bytes: Option<Bytes>,
    throughput: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    cpu: Option<f64>,
    lost: u64,
    dup: u64,
}

fn figures(b: &BrokerResult) -> Figures {
    let lat = b.phase("latency");
    Figures {
        bytes: b.phase("wire").and_then(|p| p.bytes.clone()),
        throughput: b.phase("throughput").map(|p| p.msgs_per_s),
        p50: lat.map(|p| p.latency.p50_us as f64),
        p99: lat.map(|p| p.latency.p99_us as f64),
        p999: lat.map(|p| p.latency.p999_us as f64),
        cpu: b.phase("throughput").and_then(|p| p.broker_cpu_us_per_msg),
        lost: b.phases.iter().map(|p| p.lost + p.unsent).sum(),
        dup: b.phases.iter().map(|p| p.duplicated).sum(),
    }
}

pub(crate) fn ratios(t: &BrokerResult, m: &BrokerResult) -> Ratios {
    let (ft, fm) = (figures(t), figures(m));
    Ratios {
        bytes_per_msg: ratio(ft.bytes.map(|b| b.total), fm.bytes.map(|b| b.total)),
        throughput: ratio(ft.throughput, fm.throughput),
        latency_p50: ratio(ft.p50, fm.p50),
        latency_p99: ratio(ft.p99, fm.p99),
        cpu_per_msg: ratio(ft.cpu, fm.cpu),
    }
}

fn print_table(r: &Report) {
    let s = &r.settings;
    println!(
        "\ntern-bench {}: {} pairs, MQTT {}, {}-byte body, {} in flight per sender, {}{}, {} CPUs, load {} → {}",
        r.scenario,
        s.pairs,
        s.mqtt,
        s.body_bytes,
        s.inflight_per_sender,
        s.client,
        s.xmpp.map_or(String::new(), |x| format!(", XMPP {x}")),
        r.cpus,
        r.loadavg_before.split_whitespace().next().unwrap_or("?"),
        r.loadavg_after.split_whitespace().next().unwrap_or("?"),
    );
    let ft = figures(&r.tern);
    let fm = r.reference.as_ref().map(figures);
    let num = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    let row = |label: &str, a: Option<f64>, b: Option<f64>, d: usize, show_ratio: bool| {
        let rt = if show_ratio {
            ratio(a, b).map_or("-".to_owned(), |x| format!("{x:.2}"))
        } else {
            String::new()
        };
        println!("{label:<44} {:>10} {:>10} {:>10}", num(a, d), num(b, d), rt);
    };
    let name = |b: &BrokerResult| b.broker.chars().take(10).collect::<String>();
    let reference = r.reference.as_ref().map_or("-".to_owned(), name);
    println!("{:<44} {:>10} {:>10} {:>10}", "", name(&r.tern), reference, "ratio");
    let bt = ft.bytes.clone();
    let bm = fm.as_ref().and_then(|f| f.bytes.clone());
    let leg = |f: fn(&Bytes) -> f64| (bt.as_ref().map(f), bm.as_ref().map(f));
    let (a, b) = leg(|x| x.total);
    row(&format!("wire bytes / delivered msg ({} msgs)", s.wire_messages), a, b, 1, true);
    let (a, b) = leg(|x| x.sender_up);
    row("  sender → server", a, b, 1, true);
    let (a, b) = leg(|x| x.sender_down);
    row("  server → sender", a, b, 1, true);
    let (a, b) = leg(|x| x.recipient_down);
    row("  server → recipient", a, b, 1, true);
    let (a, b) = leg(|x| x.recipient_up);
    row("  recipient → server", a, b, 1, true);
    let (a, b) = leg(|x| x.sender_link);
    row(&format!("  sender's link ({})", s.sender_link), a, b, 1, true);
    let (a, b) = leg(|x| x.recipient_link);
    row(&format!("  recipient's link ({})", s.recipient_link), a, b, 1, true);
    if r.scenario == "federation" {
        // The comparison this scenario is for: a phone's link against an XMPP client's.
        let (a, b) = leg(|x| round(x.sender_link / x.recipient_link, 3));
        row("  sender's link / recipient's link", a, b, 2, false);
    }
    let (a, b) = leg(|x| x.setup_per_client);
    row("connect setup bytes / client (not above)", a, b, 1, true);
    let payload = |b: &BrokerResult, f: fn(&PhaseResult) -> usize| b.phase("wire").map(|p| f(p) as f64);
    row(
        "  payload: sent",
        payload(&r.tern, |p| p.up_payload_bytes),
        r.reference.as_ref().and_then(|m| payload(m, |p| p.up_payload_bytes)),
        0,
        false,
    );
    row(
        "  payload: delivered",
        payload(&r.tern, |p| p.down_payload_bytes),
        r.reference.as_ref().and_then(|m| payload(m, |p| p.down_payload_bytes)),
        0,
        false,
    );
    row(
        &format!("throughput, msgs/s ({} msgs, flat out)", s.throughput_messages),
        ft.throughput,
        fm.as_ref().and_then(|f| f.throughput),
        0,
        true,
    );
    row("  broker CPU µs / msg", ft.cpu, fm.as_ref().and_then(|f| f.cpu), 1, true);
    let client_cpu = |b: &BrokerResult| b.phase("throughput").and_then(|p| p.client_cpu_us_per_msg);
    row(
        "  load generator CPU µs / msg",
        client_cpu(&r.tern),
        r.reference.as_ref().and_then(client_cpu),
        1,
        false,
    );
    let peer_cpu = |b: &BrokerResult| b.phase("throughput").and_then(|p| p.peer_cpu_us_per_msg);
    if peer_cpu(&r.tern).is_some() {
        row("  XMPP server (Prosody) CPU µs / msg", peer_cpu(&r.tern), None, 1, false);
    }
    row(
        &format!("latency p50, µs ({} msgs @ {}/s)", s.latency_messages, s.latency_rate),
        ft.p50,
        fm.as_ref().and_then(|f| f.p50),
        0,
        true,
    );
    row("latency p99, µs", ft.p99, fm.as_ref().and_then(|f| f.p99), 0, true);
    row("latency p99.9, µs", ft.p999, fm.as_ref().and_then(|f| f.p999), 0, true);
    if let Some(p) = r.tern.phase("reverse") {
        let b = p.bytes.as_ref();
        let one = |label: &str, v: Option<f64>, d: usize| println!("{label:<44} {:>10}", num(v, d));
        one("reverse, XMPP client → phone: bytes / msg", b.map(|b| b.total), 1);
        one(&format!("  sender's link ({})", s.recipient_link), b.map(|b| b.sender_link), 1);
        one(&format!("  recipient's link ({})", s.sender_link), b.map(|b| b.recipient_link), 1);
        one("  phone's link / XMPP client's link", b.map(|b| round(b.recipient_link / b.sender_link, 3)), 2);
        one(&format!("  latency p50, µs (@ {}/s)", s.latency_rate), Some(p.latency.p50_us as f64), 0);
        one("  latency p99, µs", Some(p.latency.p99_us as f64), 0);
    }
    let receipts = |b: &BrokerResult| -> Option<String> {
        let phases: Vec<_> = b.phases.iter().filter(|p| p.receipts.is_some()).collect();
        let got: u64 = phases.iter().filter_map(|p| p.receipts).sum();
        let of: u64 = phases.iter().map(|p| p.delivered).sum();
        (!phases.is_empty()).then(|| format!("{got}/{of}"))
    };
    if let Some(t) = receipts(&r.tern) {
        println!(
            "{:<44} {:>10} {:>10}",
            "receipts back at senders / delivered",
            t,
            r.reference.as_ref().and_then(receipts).unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "{:<44} {:>10} {:>10}",
        "lost (incl. unsent) / duplicated, all phases",
        format!("{}/{}", ft.lost, ft.dup),
        fm.as_ref().map_or("-".to_owned(), |f| format!("{}/{}", f.lost, f.dup))
    );
    for b in std::iter::once(&r.tern).chain(r.reference.iter()) {
        for p in &b.phases {
            if p.setup_downs > 0 {
                println!(
                    "  {} {}: {} PUBLISHes to the {} clients during setup besides the token, e.g. {}",
                    b.broker,
                    p.phase,
                    p.setup_downs,
                    2 * s.pairs,
                    p.setup_samples.first().map_or("", |x| x.as_str())
                );
            }
            if !p.errors.is_empty()
                || p.unexpected > 0
                || p.wrong_peer > 0
                || p.seq_regressions > 0
                || p.error_downs > 0
                || p.late_sends > 0
                || p.unsent > 0
            {
                println!(
                    "  {} {}: unsent {}, unexpected {} {:?}, wrong peer {}, seq regressions {}, error Downs {}, late sends {}, errors {:?}",
                    b.broker,
                    p.phase,
                    p.unsent,
                    p.unexpected,
                    p.unexpected_samples.iter().take(2).collect::<Vec<_>>(),
                    p.wrong_peer,
                    p.seq_regressions,
                    p.error_downs,
                    p.late_sends,
                    p.errors
                );
            }
        }
    }
}
