//! Results of the chat benchmark: what each phase measured, tern / mosquitto ratios, and the table.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Settings;

#[derive(Serialize, Debug, Default, Clone)]
pub(super) struct Latency {
    pub(super) count: u64,
    pub(super) p50_us: u64,
    pub(super) p90_us: u64,
    pub(super) p99_us: u64,
    pub(super) p999_us: u64,
    pub(super) max_us: u64,
    pub(super) mean_us: f64,
}

impl Latency {
    pub(super) fn of(h: &Histogram<u64>) -> Latency {
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
pub(super) struct Bytes {
    /// Sender → broker (the PUBLISHes), bytes per delivered message.
    pub(super) sender_up: f64,
    /// Broker → sender (the PUBACKs).
    pub(super) sender_down: f64,
    /// Broker → recipient (the delivered PUBLISHes).
    pub(super) recipient_down: f64,
    /// Recipient → broker (the PUBACKs).
    pub(super) recipient_up: f64,
    /// All four legs.
    pub(super) total: f64,
    /// The same, not divided: total bytes counted.
    pub(super) total_bytes: u64,
    /// Setup, per client, both directions: CONNECT/CONNACK and whatever follows before the
    /// load starts (tern: the token and presence Downs and their PUBACKs; mosquitto:
    /// SUBSCRIBE/SUBACK on recipients). What a phone pays on every (re)connect.
    pub(super) setup_per_client: f64,
}

#[derive(Serialize, Debug, Default, Clone)]
pub(super) struct PhaseResult {
    pub(super) phase: String,
    pub(super) messages: u64,
    pub(super) published: u64,
    pub(super) acked: u64,
    pub(super) delivered: u64,
    /// Published (handed to the client library) but not delivered within the time cap.
    pub(super) lost: u64,
    /// Not even published within the time cap (the load generator or the broker was too slow).
    pub(super) unsent: u64,
    pub(super) duplicated: u64,
    /// PUBLISHes to a client that were not one of this phase's chat messages (after setup).
    pub(super) unexpected: u64,
    /// A few of them, described.
    pub(super) unexpected_samples: Vec<String>,
    /// PUBLISHes to clients during the setup, other than tern's `Down{token}` (not counted in the bytes).
    pub(super) setup_downs: u64,
    pub(super) setup_samples: Vec<String>,
    /// tern only: `Down.chat.peer` other than the sender's full JID.
    pub(super) wrong_peer: u64,
    /// tern only: a `Down.seq` not above the previous one for the same recipient.
    pub(super) seq_regressions: u64,
    /// tern only: `Down{error}` received by senders.
    pub(super) error_downs: u64,
    pub(super) errors: Vec<String>,
    /// Connect (+ login / subscribe) of all clients, seconds.
    pub(super) setup_s: f64,
    /// From the first publish to the last delivery, seconds.
    pub(super) elapsed_s: f64,
    pub(super) msgs_per_s: f64,
    pub(super) target_rate: Option<f64>,
    /// Sends more than 5 ms behind schedule (latency phase): the load generator fell behind.
    pub(super) late_sends: u64,
    pub(super) latency: Latency,
    pub(super) bytes: Option<Bytes>,
    /// Payload of one sender PUBLISH and of one delivered PUBLISH, bytes.
    pub(super) up_payload_bytes: usize,
    pub(super) down_payload_bytes: usize,
    pub(super) broker_cpu_ms: Option<f64>,
    pub(super) broker_cpu_us_per_msg: Option<f64>,
    /// CPU of this load generator (all clients, proxies included), to see whether it was the limit.
    pub(super) client_cpu_us_per_msg: Option<f64>,
}

#[derive(Serialize, Debug, Default)]
pub(super) struct BrokerResult {
    pub(super) broker: String,
    pub(super) version: String,
    /// Creating the users (tern: one Argon2 hash each), seconds.
    pub(super) user_setup_s: Option<f64>,
    pub(super) phases: Vec<PhaseResult>,
    pub(super) rss_kib_end: Option<u64>,
}

impl BrokerResult {
    fn phase(&self, name: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.phase == name)
    }
}

#[derive(Serialize, Debug)]
pub(super) struct Ratios {
    bytes_per_msg: Option<f64>,
    throughput: Option<f64>,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    cpu_per_msg: Option<f64>,
}

#[derive(Serialize, Debug)]
pub(super) struct Report {
    pub(super) scenario: &'static str,
    pub(super) settings: Settings,
    pub(super) cpus: usize,
    /// /proc/loadavg before and after: other work on the machine skews everything here.
    pub(super) loadavg_before: String,
    pub(super) loadavg_after: String,
    pub(super) tern: BrokerResult,
    pub(super) mosquitto: Option<BrokerResult>,
    /// tern / mosquitto.
    pub(super) ratio_tern_over_mosquitto: Option<Ratios>,
    pub(super) notes: Vec<&'static str>,
}

pub(super) fn round(x: f64, digits: i32) -> f64 {
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

pub(super) fn ratios(t: &BrokerResult, m: &BrokerResult) -> Ratios {
    let (ft, fm) = (figures(t), figures(m));
    Ratios {
        bytes_per_msg: ratio(ft.bytes.map(|b| b.total), fm.bytes.map(|b| b.total)),
        throughput: ratio(ft.throughput, fm.throughput),
        latency_p50: ratio(ft.p50, fm.p50),
        latency_p99: ratio(ft.p99, fm.p99),
        cpu_per_msg: ratio(ft.cpu, fm.cpu),
    }
}

pub(super) fn print_table(r: &Report) {
    let s = &r.settings;
    println!(
        "\ntern-bench chat: {} pairs, 1:1 chat, MQTT {}, {}-byte body, {} in flight per sender, {}, {} CPUs, load {} → {}",
        s.pairs,
        s.mqtt,
        s.body_bytes,
        s.inflight_per_sender,
        s.client,
        r.cpus,
        r.loadavg_before.split_whitespace().next().unwrap_or("?"),
        r.loadavg_after.split_whitespace().next().unwrap_or("?"),
    );
    let ft = figures(&r.tern);
    let fm = r.mosquitto.as_ref().map(figures);
    let num = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    let row = |label: &str, a: Option<f64>, b: Option<f64>, d: usize, show_ratio: bool| {
        let rt = if show_ratio {
            ratio(a, b).map_or("-".to_owned(), |x| format!("{x:.2}"))
        } else {
            String::new()
        };
        println!("{label:<44} {:>10} {:>10} {:>10}", num(a, d), num(b, d), rt);
    };
    println!("{:<44} {:>10} {:>10} {:>10}", "", "tern", "mosquitto", "tern/mosq");
    let bt = ft.bytes.clone();
    let bm = fm.as_ref().and_then(|f| f.bytes.clone());
    let leg = |f: fn(&Bytes) -> f64| (bt.as_ref().map(f), bm.as_ref().map(f));
    let (a, b) = leg(|x| x.total);
    row(&format!("wire bytes / delivered msg ({} msgs)", s.wire_messages), a, b, 1, true);
    let (a, b) = leg(|x| x.sender_up);
    row("  sender → broker (PUBLISH)", a, b, 1, true);
    let (a, b) = leg(|x| x.sender_down);
    row("  broker → sender (PUBACK)", a, b, 1, true);
    let (a, b) = leg(|x| x.recipient_down);
    row("  broker → recipient (PUBLISH)", a, b, 1, true);
    let (a, b) = leg(|x| x.recipient_up);
    row("  recipient → broker (PUBACK)", a, b, 1, true);
    let (a, b) = leg(|x| x.setup_per_client);
    row("connect setup bytes / client (not above)", a, b, 1, true);
    let payload = |b: &BrokerResult, f: fn(&PhaseResult) -> usize| b.phase("wire").map(|p| f(p) as f64);
    row(
        "  payload: Up (sender)",
        payload(&r.tern, |p| p.up_payload_bytes),
        r.mosquitto.as_ref().and_then(|m| payload(m, |p| p.up_payload_bytes)),
        0,
        false,
    );
    row(
        "  payload: delivered (tern Down / raw Up)",
        payload(&r.tern, |p| p.down_payload_bytes),
        r.mosquitto.as_ref().and_then(|m| payload(m, |p| p.down_payload_bytes)),
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
        r.mosquitto.as_ref().and_then(client_cpu),
        1,
        false,
    );
    row(
        &format!("latency p50, µs ({} msgs @ {}/s)", s.latency_messages, s.latency_rate),
        ft.p50,
        fm.as_ref().and_then(|f| f.p50),
        0,
        true,
    );
    row("latency p99, µs", ft.p99, fm.as_ref().and_then(|f| f.p99), 0, true);
    row("latency p99.9, µs", ft.p999, fm.as_ref().and_then(|f| f.p999), 0, true);
    println!(
        "{:<44} {:>10} {:>10}",
        "lost (incl. unsent) / duplicated, all phases",
        format!("{}/{}", ft.lost, ft.dup),
        fm.as_ref().map_or("-".to_owned(), |f| format!("{}/{}", f.lost, f.dup))
    );
    for b in std::iter::once(&r.tern).chain(r.mosquitto.iter()) {
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
