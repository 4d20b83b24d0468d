//! Starting and stopping the brokers under test: tern, and mosquitto for comparison.
//!
//! Both are our own child processes, listen on 127.0.0.1 only, and are killed by PID when the
//! handle is stopped or dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A broker process we started.
pub struct Broker {
    pub addr: SocketAddr,
    pub version: String,
    child: Child,
    pid: u32,
}

impl Broker {
    /// A handle on a server process we just spawned (it is killed when the handle drops).
    pub fn from_child(child: Child, addr: SocketAddr, version: String) -> anyhow::Result<Broker> {
        let pid = child.id().context("the server exited at once")?;
        Ok(Broker { addr, version, child, pid })
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where it listens, and its process.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint { addr: self.addr, pid: Some(self.pid) }
    }

    /// CPU time (user + system) the broker used so far, in milliseconds.
    pub fn cpu_ms(&self) -> Option<f64> {
        self.endpoint().cpu_ms()
    }

    /// Resident set size, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.endpoint().rss_kib()
    }

    /// Kills the process (by its PID, via the child handle) and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A server under test: where it listens and, when known, its process, for its CPU and memory
/// figures (one we started, or one an operator runs and names with `--addr` and `--pid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
}

impl Endpoint {
    /// CPU time (user + system) the server used so far, in milliseconds.
    pub fn cpu_ms(&self) -> Option<f64> {
        cpu_ms(&format!("/proc/{}/stat", self.pid?))
    }

    /// The server's resident memory (VmRSS), KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

/// A tern the operator runs, instead of one the bench starts.
#[derive(clap::Args, Debug, Clone)]
pub struct RunningTern {
    /// Use the tern already listening (plain MQTT) here instead of starting one; its users
    /// must exist (see --admin-socket) with the bench's password.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// PID of the tern at --addr, for its memory and CPU figures.
    #[arg(long, requires = "addr")]
    pub pid: Option<u32>,
    /// Admin socket (`<data dir>/admin.sock`) of the tern at --addr, to create the bench's users.
    #[arg(long, requires = "addr")]
    pub admin_socket: Option<PathBuf>,
}

/// Creates `names` with `password` through a running tern's admin socket, four at a time
/// (each is an Argon2 hash in the daemon), counting each one done in `done`. A user left from
/// an earlier run against the same tern is fine.
pub async fn add_users_by_socket(
    sock: &Path,
    names: &[String],
    password: &str,
    done: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    let secret = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, password);
    for name in names {
        let line = format!("add {name} {secret}\n");
        let exists = format!("{name} exists");
        let (sock, sem, done) = (sock.to_path_buf(), sem.clone(), done.clone());
        tasks.spawn(async move {
            let _slot = sem.acquire_owned().await?;
            let mut s = tokio::net::UnixStream::connect(&sock)
                .await
                .with_context(|| format!("admin socket {}", sock.display()))?;
            s.write_all(line.as_bytes()).await?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).await?;
            // The admin socket answers `ok`, or `err` and the reason on the next line.
            if !reply.starts_with("ok") && reply.trim_end() != format!("err\n{exists}") {
                bail!("admin socket: {}", reply.trim());
            }
            done.fetch_add(1, Ordering::Relaxed);
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// CPU time (user + system) of the process whose `stat` file this is, in milliseconds.
pub fn cpu_ms(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 * 1000.0 / clock_ticks_per_sec() as f64)
}

fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Starts `tern serve` on a free loopback port with only the plain TCP listener (and what
/// `config`, a config file, adds: federation).
pub async fn start_tern(
    bin: &Path,
    data_dir: &Path,
    domain: &str,
    config: Option<&Path>,
) -> anyhow::Result<Broker> {
    std::fs::create_dir_all(data_dir)?;
    let log = std::fs::File::create(data_dir.join("tern.log"))?;
    let mut cmd = Command::new(bin);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let mut child = cmd
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--domain", domain])
        .args(["--mqtt-tcp", "127.0.0.1:0", "--mqtt-tls", "off", "--mqtt-ws", "off", "--metrics", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("tern exited at once")?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("tern did not say `tern ready` within 30 s")??
        .with_context(|| {
            format!("tern exited before it was ready; see {}", data_dir.join("tern.log").display())
        })?;
    // Keep draining stdout so that tern never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tcp="))
        .with_context(|| format!("unexpected ready line from tern: {line:?}"))?
        .parse::<SocketAddr>()?;
    Ok(Broker { addr, version: version_of(bin), child, pid })
}

/// What `bin --version` prints (empty if it cannot be run).
pub fn version_of(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Waits (at most 30 s each) for commands we started, each named by its command line; fails
/// on the first that fails, with what it printed.
pub async fn wait_all(children: Vec<(String, Child)>) -> anyhow::Result<()> {
    for (command, child) in children {
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .with_context(|| format!("`{command}` took over 30 s"))??;
        if !out.status.success() {
            bail!(
                "`{command}` failed: {} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Starts `mosquitto -c <generated conf>` on a free loopback port, anonymous access allowed.
///
/// Settings chosen to match tern's defaults where there is one: 32 QoS 1 messages in flight per
/// client, no queue limit (tern's inbox does not drop either), TCP_NODELAY on.
pub async fn start_mosquitto(bin: &Path, work_dir: &Path) -> anyhow::Result<Broker> {
    std::fs::create_dir_all(work_dir)?;
    let port = free_port()?;
    let conf_path = work_dir.join("mosquitto.conf");
    std::fs::write(
        &conf_path,
        format!(
            "# generated by tern-bench\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             max_inflight_messages 32\n\
             max_queued_messages 0\n\
             set_tcp_nodelay true\n\
             log_dest stderr\n"
        ),
    )?;
    let log = std::fs::File::create(work_dir.join("mosquitto.log"))?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (install the Debian package `mosquitto`, or pass --against none)",
                bin.display()
            )
        })?;
    let pid = child.id().context("mosquitto exited at once")?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut broker = Broker { addr, version: mosquitto_version(bin), child, pid };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(broker);
        }
        if let Ok(Some(status)) = broker.child.try_wait() {
            bail!("mosquitto exited ({status}); see {}", work_dir.join("mosquitto.log").display());
        }
        if tokio::time::Instant::now() > deadline {
            broker.stop().await;
            bail!("mosquitto did not listen on {addr} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mosquitto_version(bin: &Path) -> String {
    // `mosquitto -h` prints "mosquitto version X" first (on stdout) and exits non-zero.
    std::process::Command::new(bin)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_default()
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A fresh scratch directory for one run, under the system temp dir unless given.
pub fn scratch_dir(given: Option<&Path>) -> anyhow::Result<(PathBuf, bool)> {
    if let Some(d) = given {
        std::fs::create_dir_all(d)?;
        return Ok((d.to_path_buf(), false));
    }
    let d = std::env::temp_dir().join(format!("tern-bench-{}", std::process::id()));
    if d.exists() {
        std::fs::remove_dir_all(&d)?;
    }
    std::fs::create_dir_all(&d)?;
    Ok((d, true))
}
