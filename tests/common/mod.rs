//! A tern process for end-to-end tests: a fresh data dir, loopback ports, users, and phones.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use tern_schemas::v1;
use tokio::sync::mpsc;

/// The domain every test server serves.
pub const DOMAIN: &str = "example.test";

/// A running `tern serve`, killed on drop.
pub struct Tern {
    child: Child,
    pub dir: PathBuf,
    pub tcp: SocketAddr,
    pub metrics: SocketAddr,
    _tmp: Option<tempfile::TempDir>,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tern")
}

/// Adds a user straight into the store (no daemon may be running on `dir`) or via the daemon.
pub fn add_user(dir: &Path, name: &str, password: &str) {
    let mut child = Command::new(bin())
        .args(["--data-dir"])
        .arg(dir)
        .args(["user", "add", name, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("tern binary runs");
    child.stdin.take().expect("piped").write_all(password.as_bytes()).expect("write password");
    assert!(child.wait().expect("tern user add exits").success(), "user add {name}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Tern {
    /// A fresh server with users alice, bob and carol (password = name + "-pw").
    pub fn start() -> Tern {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        for u in ["alice", "bob", "carol"] {
            add_user(&dir, u, &format!("{u}-pw"));
        }
        let mut t = Tern::start_in(&dir);
        t._tmp = Some(tmp);
        t
    }

    /// Starts a server on an existing data dir.
    pub fn start_in(dir: &Path) -> Tern {
        Tern::start_configured(dir, None)
    }

    /// Starts a server on an existing data dir with `config` (TOML) as its config file.
    pub fn start_configured(dir: &Path, config: Option<&str>) -> Tern {
        let metrics_port = free_port();
        let mut cmd = Command::new(bin());
        if let Some(config) = config {
            let path = dir.join("tern.toml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd
            .arg("--data-dir")
            .arg(dir)
            .args([
                "serve",
                "--domain",
                DOMAIN,
                "--mqtt-tcp",
                "127.0.0.1:0",
                "--mqtt-tls",
                "off",
                "--mqtt-ws",
                "off",
            ])
            .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
            .env("TERN_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("tern serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let tcp = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tcp="))
            .unwrap_or_else(|| panic!("no ready line: {line:?}"))
            .parse()
            .unwrap();
        Tern {
            child,
            dir: dir.to_path_buf(),
            tcp,
            metrics: format!("127.0.0.1:{metrics_port}").parse().unwrap(),
            _tmp: None,
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Scrapes the Prometheus endpoint.
    pub fn metrics_text(&self) -> String {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    /// Sum of a counter's samples in the metrics text (all label sets).
    pub fn counter(&self, name: &str) -> f64 {
        self.metrics_text()
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One phone: an rumqttc client whose downward envelopes arrive on a channel.
pub struct Phone {
    pub client: AsyncClient,
    pub down: mpsc::UnboundedReceiver<v1::Down>,
    pub connack: mpsc::UnboundedReceiver<rumqttc::ConnectReturnCode>,
    pub acks: mpsc::UnboundedReceiver<u16>,
    task: tokio::task::JoinHandle<()>,
}

impl Phone {
    /// Connects `user`/`device` (clean session off, so the server resumes it).
    pub async fn connect(addr: SocketAddr, user: &str, device: &str, password: &str) -> Phone {
        let mut opts = MqttOptions::new(device, addr.ip().to_string(), addr.port());
        opts.set_credentials(user, password);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(false);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, eventloop) = AsyncClient::new(opts, 512);
        Phone::drive(client, eventloop)
    }

    fn drive(client: AsyncClient, mut eventloop: EventLoop) -> Phone {
        let (down_tx, down) = mpsc::unbounded_channel();
        let (connack_tx, connack) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(c))) => {
                        let _ = connack_tx.send(c.code);
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) if p.topic == "d" => {
                        if let Ok(d) = v1::Down::decode(p.payload) {
                            let _ = down_tx.send(d);
                        }
                    }
                    Ok(Event::Incoming(Incoming::PubAck(a))) => {
                        let _ = ack_tx.send(a.pkid);
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        let _ = connack_tx.send(code);
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Phone { client, down, connack, acks, task }
    }

    /// Waits for the CONNACK code.
    pub async fn connack(&mut self) -> rumqttc::ConnectReturnCode {
        tokio::time::timeout(Duration::from_secs(10), self.connack.recv())
            .await
            .expect("connack in time")
            .expect("connack")
    }

    /// Publishes an `Up` at QoS 1.
    pub async fn send(&self, up: v1::Up) {
        self.client.publish("u", QoS::AtLeastOnce, false, up.encode_to_vec()).await.unwrap();
    }

    /// Publishes raw bytes.
    pub async fn send_raw(&self, topic: &str, qos: QoS, payload: Vec<u8>) {
        self.client.publish(topic, qos, false, payload).await.unwrap();
    }

    /// Sends a chat and waits for its PUBACK.
    pub async fn chat(&mut self, id: &str, to: &str, body: &str) {
        self.send(chat(id, to, body)).await;
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv()).await.expect("puback in time");
    }

    /// The next downward envelope matching `keep`, skipping others; panics after 10 s.
    pub async fn next_where(&mut self, keep: impl Fn(&v1::Down) -> bool) -> v1::Down {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let d = tokio::time::timeout_at(deadline, self.down.recv())
                .await
                .expect("envelope in time")
                .expect("open");
            if keep(&d) {
                return d;
            }
        }
    }

    /// The next stored (seq > 0) envelope.
    pub async fn next_stored(&mut self) -> v1::Down {
        self.next_where(|d| d.seq > 0).await
    }

    /// Everything that arrives within `wait`.
    pub async fn drain_for(&mut self, wait: Duration) -> Vec<v1::Down> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(d)) = tokio::time::timeout_at(deadline, self.down.recv()).await {
            out.push(d);
        }
        out
    }

    /// Drops the TCP connection without DISCONNECT, as a phone losing its network does.
    pub fn drop_network(self) {
        self.task.abort();
    }

    /// Disconnects cleanly.
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.task.abort();
    }
}

/// An `Up{chat}`.
pub fn chat(id: &str, to: &str, body: &str) -> v1::Up {
    v1::Up {
        id: id.into(),
        body: Some(v1::up::Body::Chat(v1::Chat { peer: to.into(), body: body.into(), ..Default::default() })),
        ..Default::default()
    }
}

/// The bare JID of a test user.
pub fn jid(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}
