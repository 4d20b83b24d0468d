//! The session scenarios' results: named figures per system, a table with both systems and their
//! ratio, and the same as JSON.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// One system's results.
#[derive(Serialize, Debug, Default)]
pub(crate) struct Figures {
    pub(crate) broker: String,
    pub(crate) version: String,
    /// The figures by key (the keys of the scenario's [`Row`]s, and more).
    pub(crate) values: BTreeMap<String, f64>,
    /// Clients that failed (connect refused, timed out, broken) and messages that went missing.
    pub(crate) failures: u64,
    /// The first few errors, verbatim.
    pub(crate) errors: Vec<String>,
    /// Anything else worth keeping (curves, per-phase details).
    pub(crate) detail: serde_json::Map<String, serde_json::Value>,
}

impl Figures {
    pub(crate) fn new(broker: &str, version: &str) -> Figures {
        Figures { broker: broker.into(), version: version.into(), ..Default::default() }
    }

    /// Sets a figure if it is known.
    pub(crate) fn set(&mut self, key: &str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.values.insert(key.into(), super::super::report::round(v, 3));
        }
    }

    /// Counts a failure and keeps its text if it is among the first few.
    pub(crate) fn fail(&mut self, e: impl std::fmt::Display) {
        self.failures += 1;
        if self.errors.len() < 5 {
            self.errors.push(e.to_string());
        }
    }
}

/// A line of the table: a figure's key, its label, its decimals.
pub(crate) struct Row(pub(crate) &'static str, pub(crate) String, pub(crate) usize);

/// A run of one session scenario.
#[derive(Serialize)]
pub(crate) struct SessionReport {
    pub(crate) scenario: &'static str,
    pub(crate) settings: serde_json::Value,
    pub(crate) cpus: usize,
    /// /proc/loadavg before and after: other work on the machine skews everything here.
    pub(crate) loadavg_before: String,
    pub(crate) loadavg_after: String,
    /// tern, then the reference (if any).
    pub(crate) systems: Vec<Figures>,
    /// tern / reference, per figure both have.
    pub(crate) ratio_tern_over_reference: BTreeMap<String, f64>,
    pub(crate) notes: Vec<&'static str>,
    #[serde(skip)]
    rows: Vec<Row>,
}

impl SessionReport {
    pub(crate) fn new(
        scenario: &'static str,
        settings: serde_json::Value,
        loadavg_before: String,
        systems: Vec<Figures>,
        rows: Vec<Row>,
        notes: Vec<&'static str>,
    ) -> SessionReport {
        let mut ratios = BTreeMap::new();
        if let [t, r] = systems.as_slice() {
            for (k, a) in &t.values {
                if let Some(b) = r.values.get(k).filter(|b| **b != 0.0) {
                    ratios.insert(k.clone(), super::super::report::round(a / b, 3));
                }
            }
        }
        SessionReport {
            scenario,
            settings,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            loadavg_before,
            loadavg_after: crate::chat::loadavg(),
            systems,
            ratio_tern_over_reference: ratios,
            notes,
            rows,
        }
    }

    fn clean(&self) -> bool {
        self.systems.iter().all(|s| s.failures == 0)
    }
}

/// Prints the table and writes the JSON; returns whether the run was clean.
pub(crate) fn finish(r: &SessionReport, json: &Path) -> anyhow::Result<bool> {
    print_table(r);
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(json, serde_json::to_string_pretty(r)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    println!("\nJSON: {}", json.display());
    Ok(r.clean())
}

fn print_table(r: &SessionReport) {
    println!(
        "\ntern-bench {}: {} ; {} CPUs, load {} → {}",
        r.scenario,
        r.settings,
        r.cpus,
        r.loadavg_before.split_whitespace().next().unwrap_or("?"),
        r.loadavg_after.split_whitespace().next().unwrap_or("?"),
    );
    let name = |i: usize| r.systems.get(i).map_or("-".to_owned(), |s| s.broker.chars().take(10).collect());
    println!("{:<50} {:>12} {:>12} {:>8}", "", name(0), name(1), "ratio");
    for Row(key, label, d) in &r.rows {
        let d = *d;
        let cell = |i: usize| {
            r.systems.get(i).and_then(|s| s.values.get(*key)).map_or("-".to_owned(), |v| format!("{v:.d$}"))
        };
        let ratio = r.ratio_tern_over_reference.get(*key).map_or(String::new(), |x| format!("{x:.2}"));
        println!("{label:<50} {:>12} {:>12} {:>8}", cell(0), cell(1), ratio);
    }
    let failures: Vec<String> = r.systems.iter().map(|s| s.failures.to_string()).collect();
    println!("{:<50} {:>12} {:>12}", "failures", failures[0], failures.get(1).map_or("-", |s| s));
    for s in &r.systems {
        for e in &s.errors {
            println!("  {}: {e}", s.broker);
        }
    }
}
