//! One pass of connects over many phones: started at a rate or as fast as a concurrency limit
//! allows, each phone kept connected until the pass ends; with the figures of the pass.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{connect_phone, Figures, Link, Phone, Progress, Target};
use crate::report::new_histogram;

/// How the connects of a pass are started.
#[derive(Clone, Copy)]
pub(crate) struct How {
    /// Attempts started per second, or as fast as `concurrency` allows.
    pub(crate) rate: Option<f64>,
    pub(crate) concurrency: usize,
    pub(crate) keepalive_s: u16,
}

/// One pass of connects: how many worked, how fast, and the live connections.
pub(crate) struct Pass {
    pub(crate) ok: u64,
    pub(crate) elapsed: Duration,
    pub(crate) hist: hdrhistogram::Histogram<u64>,
    pub(crate) conns: Vec<Link>,
    pub(crate) tokens: Vec<Option<String>>,
    pub(crate) bytes: u64,
    pub(crate) cpu_ms: Option<f64>,
    /// Server RSS growth over the pass with every phone still connected, KiB.
    pub(crate) rss_growth_kib: Option<f64>,
}

/// Connects every phone that has a secret; keeps the connections.
pub(crate) async fn connect_all(
    how: How,
    t: &Arc<Target>,
    phones: &Arc<Vec<Phone>>,
    secrets: Vec<Option<String>>,
    label: &'static str,
    f: &mut Figures,
) -> Pass {
    let n = phones.len();
    let progress = Progress::start(label, n as u64);
    let limit = if how.rate.is_some() { 10_000 } else { how.concurrency };
    let sem = Arc::new(tokio::sync::Semaphore::new(limit));
    let (cpu0, rss0) = (t.cpu_ms(), t.rss_kib());
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, secret) in secrets.into_iter().enumerate() {
        let Some(secret) = secret else { continue };
        if let Some(rate) = how.rate {
            tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        // Invariant: the semaphore is never closed.
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let (phones, t, done) = (phones.clone(), t.clone(), progress.done.clone());
        tasks.spawn(async move {
            let r = connect_phone(&t, &phones[i], &secret, false, how.keepalive_s).await;
            drop(permit);
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (i, r)
        });
    }
    let mut p = Pass {
        ok: 0,
        elapsed: Duration::ZERO,
        hist: new_histogram(),
        conns: Vec::with_capacity(n),
        tokens: vec![None; n],
        bytes: 0,
        cpu_ms: None,
        rss_growth_kib: None,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, Ok(c))) => {
                p.ok += 1;
                p.hist.saturating_record(c.latency.as_micros().max(1) as u64);
                p.bytes += c.conn.bytes();
                p.tokens[i] = c.token;
                p.conns.push(c.conn);
            }
            Ok((i, Err(e))) => f.fail(format!("{label} phone {i}: {e:#}")),
            Err(e) => f.fail(format!("{label}: task {e}")),
        }
    }
    p.elapsed = t0.elapsed();
    p.cpu_ms = t.cpu_ms().zip(cpu0).map(|(b, a)| b - a);
    p.rss_growth_kib = t.rss_kib().zip(rss0).map(|(b, a)| b as f64 - a as f64);
    progress.finish();
    p
}

/// Closes every connection cleanly, so the server forgets them before the next pass.
pub(crate) async fn close_all(conns: Vec<Link>) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in conns {
        tasks.spawn(c.close());
    }
    while tasks.join_next().await.is_some() {}
    // Let the server finish its session teardown before the next pass is timed.
    tokio::time::sleep(Duration::from_millis(500)).await;
}
