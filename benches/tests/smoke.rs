//! CI smoke test of the load scenarios: `tern-bench <scenario> --quick` against the debug tern,
//! with real mosquitto and Prosody (installed by scripts/install-test-deps). It checks that each
//! run completes cleanly (every message delivered once, receipted where clients send receipts)
//! and that the JSON has the figures; it asserts nothing about speed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tern binary next to tern-bench: `cargo test --workspace` builds both into one dir.
fn tern_bin() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_tern-bench"));
    let tern = bench.with_file_name("tern");
    assert!(
        tern.exists(),
        "{} is missing: build it first (`cargo build -p tern`, or run `cargo test --workspace`)",
        tern.display()
    );
    tern
}

/// Runs one quick scenario and returns its JSON report.
fn run_quick(scenario: &str, extra: &[&str]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("tern-bench-smoke-{scenario}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .arg(scenario)
        .arg("--quick")
        .arg("--tern-bin")
        .arg(tern_bin())
        .arg("--json")
        .arg(&json)
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running tern-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tern-bench {scenario} --quick failed\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    report
}

fn phase<'a>(system: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    system["phases"].as_array().unwrap().iter().find(|p| p["phase"] == name).unwrap()
}

#[test]
fn federation_quick_runs_clean_against_prosody() {
    let r = run_quick("federation", &[]);
    assert_eq!(r["scenario"], "federation");
    let fed = &r["tern"];
    for name in ["wire", "throughput", "latency", "reverse"] {
        let p = phase(fed, name);
        assert_eq!(p["delivered"], p["messages"], "{name}: {p}");
        assert_eq!(p["duplicated"], 0, "{name}: {p}");
    }
    for name in ["wire", "reverse"] {
        let p = phase(fed, name);
        assert_eq!(p["receipts"], p["delivered"], "{name}: {p}");
        let bytes = &p["bytes"];
        // Both links carried the message and its receipt, each way.
        for leg in ["sender_up", "sender_down", "recipient_down", "recipient_up"] {
            assert!(bytes[leg].as_f64().unwrap() > 0.0, "{name} {leg}: {bytes}");
        }
    }
}

#[test]
fn chat_quick_runs_clean_against_mosquitto() {
    let r = run_quick("chat", &[]);
    let reference = &r["reference"];
    assert_eq!(reference["broker"], "mosquitto");
    for system in [&r["tern"], reference] {
        let p = phase(system, "wire");
        assert_eq!(p["delivered"], p["messages"], "{p}");
    }
}

#[test]
fn chat_quick_runs_clean_against_prosody() {
    let r = run_quick("chat", &["--against", "prosody"]);
    let reference = &r["reference"];
    assert_eq!(reference["broker"], "prosody");
    let p = phase(reference, "wire");
    assert_eq!(p["delivered"], p["messages"], "{p}");
    assert!(p["bytes"]["recipient_down"].as_f64().unwrap() > 0.0, "{p}");
    assert!(r["ratio_tern_over_reference"]["bytes_per_msg"].as_f64().is_some());
}
