//! `connect`: N phones connect and authenticate, flat out (at most `--concurrency` at once) or
//! at `--rate` per second, and stay connected until all have; then all reconnect the cheap way.
//!
//! tern: the first pass logs in with the password (one Argon2 check each) and gets the session
//! token, the second presents the token (one HMAC). mosquitto: anonymous both times. Prosody:
//! a c2s login both times (TCP, stream, SASL PLAIN against internal_hashed, i.e. one PBKDF2 of
//! 10,000 iterations, stream restart, bind, initial presence), from 127.0.0.2… like the phones.

use std::sync::Arc;

use serde_json::json;

use super::pass::{close_all, connect_all, How, Pass};
use super::{run_both, user_names, Figures, Phone, Row, System, Target, TargetArgs};

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Phones [default: 2000; --quick: 40].
    #[arg(long)]
    clients: Option<usize>,
    /// Connect attempts started per second [default: as fast as possible].
    #[arg(long)]
    rate: Option<f64>,
    /// Connects in progress at once [default: 32; --quick: 4].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Devices per user (tern): phones share users this way; each device still logs in once
    /// with the password. 1 (the default) is the fair measure.
    #[arg(long, default_value_t = 1)]
    devices_per_user: usize,
}

impl ConnectArgs {
    fn concurrency(&self) -> usize {
        super::concurrency(self.concurrency, self.target.quick)
    }
}

pub async fn run(a: ConnectArgs) -> anyhow::Result<()> {
    let n = a.clients.unwrap_or(if a.target.quick { 40 } else { 2000 });
    anyhow::ensure!((1..=1_000_000).contains(&n), "--clients must be 1..=1000000");
    anyhow::ensure!(
        a.concurrency() >= 1 && a.devices_per_user >= 1,
        "--concurrency and --devices-per-user ≥ 1"
    );
    anyhow::ensure!(a.rate.is_none_or(|r| r > 0.0), "--rate must be positive");
    let settings = json!({
        "clients": n, "rate": a.rate, "concurrency": a.concurrency(),
        "devices_per_user": a.devices_per_user, "mqtt": "3.1.1", "client": "tern-bench raw_mqtt",
    });
    let rows = vec![
        Row("connects_per_s", "first connect: connects/s (tern: password)".into(), 1),
        Row("p50_ms", "  latency p50, ms (TCP connect → CONNACK / bind)".into(), 2),
        Row("p99_ms", "  latency p99, ms".into(), 2),
        Row("server_cpu_us", "  server CPU µs / connect".into(), 0),
        Row("bytes", "  bytes / connect (tern: with the token)".into(), 1),
        Row("rss_kib", "  server RSS growth / connected phone, KiB".into(), 1),
        Row("re_connects_per_s", "reconnect: connects/s (tern: token)".into(), 1),
        Row("re_p50_ms", "  latency p50, ms".into(), 2),
        Row("re_p99_ms", "  latency p99, ms".into(), 2),
        Row("re_server_cpu_us", "  server CPU µs / connect".into(), 0),
        Row("re_bytes", "  bytes / connect".into(), 1),
        Row("re_rss_kib", "  server RSS growth / connected phone, KiB".into(), 1),
        Row("user_setup_s", "users created in, s (not timed above)".into(), 1),
    ];
    let notes = vec![
        "connect latency: from before the TCP connect to CONNACK, loopback; both passes keep every phone connected until the pass ends",
        "tern: password logins are Argon2id checks (at most 4 at once in the daemon); the token is sent right after CONNACK and counted in bytes",
        "mosquitto: anonymous, no authentication at all",
        "prosody: c2s, plaintext, SASL PLAIN (internal_hashed: PBKDF2-SHA1, 10,000 iterations); latency from before the TCP connect to the bind result, initial presence sent; no tokens, so the reconnect is the same login",
    ];
    let a = Arc::new(a);
    run_both(&a.target, "connect", settings, rows, notes, |t| run_on(a.clone(), t, n)).await
}

async fn run_on(a: Arc<ConnectArgs>, t: Arc<Target>, n: usize) -> anyhow::Result<Figures> {
    let mut f = Figures::new(t.name(), &t.version);
    let d = a.devices_per_user;
    let users = user_names("c", n, d);
    f.set("user_setup_s", Some(t.add_users(&users, &a.target.password).await?));
    let phones: Arc<Vec<Phone>> = Arc::new((0..n).map(|i| Phone::new(t.system, t.addr, "c", i, d)).collect());
    let secrets = vec![Some(a.target.password.clone()); n];
    let how = How { rate: a.rate, concurrency: a.concurrency(), keepalive_s: 60 };
    let first = connect_all(how, &t, &phones, secrets, "connecting", &mut f).await;
    record(&mut f, "", &first);
    close_all(first.conns).await;
    let secrets = match t.system {
        System::Tern => first.tokens,
        System::Mosquitto => vec![Some(String::new()); n],
        System::Prosody => vec![Some(a.target.password.clone()); n],
    };
    let again = connect_all(how, &t, &phones, secrets, "reconnecting", &mut f).await;
    record(&mut f, "re_", &again);
    close_all(again.conns).await;
    Ok(f)
}

fn record(f: &mut Figures, prefix: &str, p: &Pass) {
    let ms = |q: f64| Some(p.hist.value_at_quantile(q) as f64 / 1000.0);
    let per = |x: f64| (p.ok > 0).then(|| x / p.ok as f64);
    f.set(&format!("{prefix}connects_per_s"), Some(p.ok as f64 / p.elapsed.as_secs_f64()));
    f.set(&format!("{prefix}p50_ms"), ms(0.5));
    f.set(&format!("{prefix}p99_ms"), ms(0.99));
    f.set(&format!("{prefix}server_cpu_us"), p.cpu_ms.and_then(|c| per(c * 1000.0)));
    f.set(&format!("{prefix}bytes"), per(p.bytes as f64));
    f.set(&format!("{prefix}ok"), Some(p.ok as f64));
    f.set(&format!("{prefix}rss_kib"), p.rss_growth_kib.and_then(per));
}
