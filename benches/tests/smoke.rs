//! CI smoke test of the load scenarios (chat, federation, connect, idle, resume, fanout, the
//! last four also `--against prosody`, and fanout's group chat room variant `--room`):
//! `tern-bench <scenario> --quick` against the debug tern (chat also against one started here,
//! at an address, as an operator's),
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

/// tern's figures in a session scenario's report, after checking the run had no failures.
fn session_figures<'a>(r: &'a serde_json::Value, scenario: &str) -> &'a serde_json::Value {
    session_figures_against(r, scenario, "mosquitto").0
}

/// tern's and the reference's figures, after checking the run had both and no failures.
fn session_figures_against<'a>(
    r: &'a serde_json::Value,
    scenario: &str,
    reference: &str,
) -> (&'a serde_json::Value, &'a serde_json::Value) {
    assert_eq!(r["scenario"], scenario);
    let systems = r["systems"].as_array().unwrap();
    assert_eq!(systems.len(), 2, "tern and {reference}: {r}");
    assert_eq!(systems[0]["broker"], "tern");
    assert_eq!(systems[1]["broker"], reference);
    for s in systems {
        assert_eq!(s["failures"], 0, "{s}");
    }
    (&systems[0]["values"], &systems[1]["values"])
}

/// A quick session scenario against Prosody: both systems' figures.
fn against_prosody(scenario: &str) -> (serde_json::Value, serde_json::Value) {
    let r = run_quick(scenario, &["--against", "prosody"]);
    let (tern, prosody) = session_figures_against(&r, scenario, "prosody");
    (tern.clone(), prosody.clone())
}

#[test]
fn connect_quick_logs_in_with_password_then_token() {
    let r = run_quick("connect", &[]);
    let tern = session_figures(&r, "connect");
    assert_eq!(tern["ok"], 40.0, "{tern}");
    assert_eq!(tern["re_ok"], 40.0, "{tern}");
    assert!(tern["p99_ms"].as_f64().unwrap() > 0.0, "{tern}");
    assert!(r["ratio_tern_over_reference"]["connects_per_s"].as_f64().is_some(), "{r}");
}

#[test]
fn idle_quick_holds_sessions_and_reads_memory() {
    let r = run_quick("idle", &[]);
    let tern = session_figures(&r, "idle");
    assert_eq!(tern["sessions"], 50.0, "{tern}");
    assert!(tern["rss_mib_all_up"].as_f64().unwrap() > 0.0, "{tern}");
    // A PINGREQ and its PINGRESP a second, both ways, at least.
    assert!(tern["keepalive_bytes_per_session_hour"].as_f64().unwrap() >= 3600.0, "{tern}");
}

#[test]
fn resume_quick_gets_every_missed_message() {
    let r = run_quick("resume", &[]);
    let tern = session_figures(&r, "resume");
    assert_eq!(tern["resumed"], 10.0, "{tern}");
    assert_eq!(tern["session_present"], 10.0, "{tern}");
    assert!(tern["bytes_per_missed"].as_f64().unwrap() > 0.0, "{tern}");
}

#[test]
fn fanout_quick_delivers_to_every_recipient() {
    let r = run_quick("fanout", &[]);
    let tern = session_figures(&r, "fanout");
    assert_eq!(tern["delivered"], 200.0, "{tern}");
    assert_eq!(r["systems"][1]["values"]["delivered"], 200.0, "{r}");
}

#[test]
fn connect_quick_logs_in_over_c2s_against_prosody() {
    let (tern, prosody) = against_prosody("connect");
    for v in [&tern, &prosody] {
        assert_eq!(v["ok"], 40.0, "{v}");
        assert_eq!(v["re_ok"], 40.0, "{v}");
    }
    assert!(prosody["bytes"].as_f64().unwrap() > 0.0, "{prosody}");
}

#[test]
fn resume_quick_resumes_by_xep_0198_against_prosody() {
    let (tern, prosody) = against_prosody("resume");
    assert_eq!(tern["resumed"], 10.0, "{tern}");
    assert_eq!(prosody["resumed"], 10.0, "{prosody}");
    // Every client came back into its hibernated session, none by a fresh login.
    assert_eq!(prosody["session_present"], 10.0, "{prosody}");
    assert_eq!(prosody["fresh_logins"], 0.0, "{prosody}");
}

#[test]
fn idle_quick_holds_c2s_sessions_against_prosody() {
    let (tern, prosody) = against_prosody("idle");
    for v in [&tern, &prosody] {
        assert_eq!(v["sessions"], 50.0, "{v}");
        assert!(v["rss_mib_all_up"].as_f64().unwrap() > 0.0, "{v}");
    }
    // One whitespace byte a second, at least.
    assert!(prosody["keepalive_bytes_per_session_hour"].as_f64().unwrap() >= 3600.0, "{prosody}");
}

#[test]
fn fanout_quick_delivers_to_every_c2s_recipient_against_prosody() {
    let (tern, prosody) = against_prosody("fanout");
    assert_eq!(tern["delivered"], 200.0, "{tern}");
    assert_eq!(prosody["delivered"], 200.0, "{prosody}");
}

#[test]
fn fanout_room_quick_delivers_to_every_occupant_against_prosody() {
    let r = run_quick("fanout", &["--room", "--against", "prosody"]);
    let (tern, prosody) = session_figures_against(&r, "fanout", "prosody");
    // 5 recipients × 20 groupchat messages, on tern through a federated Prosody MUC.
    for v in [tern, prosody] {
        assert_eq!(v["delivered"], 100.0, "{v}");
        assert!(v["recipient_bytes_per_delivery"].as_f64().unwrap() > 0.0, "{v}");
    }
    assert!(r["ratio_tern_over_reference"]["deliveries_per_s"].as_f64().is_some(), "{r}");
}

/// A tern started here, as an operator would run one: `chat --addr` must drive it as it drives
/// the tern it starts itself, creating its users through the admin socket.
#[test]
fn chat_quick_runs_against_a_tern_at_an_address() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("tern-bench-smoke-addr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tern = Command::new(tern_bin())
        .arg("--data-dir")
        .arg(&dir)
        .args(["serve", "--domain", "bench.test", "--mqtt-tcp", "127.0.0.1:0"])
        .args(["--mqtt-tls", "off", "--mqtt-ws", "off", "--metrics", "off"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting tern");
    let mut ready = String::new();
    std::io::BufReader::new(tern.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    let addr = ready.split_whitespace().find_map(|w| w.strip_prefix("tcp=")).expect("tcp= in the ready line");
    let (pid, sock) = (tern.id().to_string(), dir.join("admin.sock"));
    let args = ["--addr", addr, "--pid", &pid, "--admin-socket", sock.to_str().unwrap(), "--against", "none"];
    let r = run_quick("chat", &args);
    let _ = tern.kill();
    let _ = tern.wait();
    let _ = std::fs::remove_dir_all(&dir);
    for name in ["wire", "throughput", "latency"] {
        let p = phase(&r["tern"], name);
        assert_eq!(p["delivered"], p["messages"], "{name}: {p}");
        assert_eq!(p["duplicated"], 0, "{name}: {p}");
    }
    assert!(phase(&r["tern"], "throughput")["broker_cpu_ms"].as_f64().is_some(), "--pid gives CPU figures");
}
