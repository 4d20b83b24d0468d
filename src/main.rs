//! The `tern` command: `serve`, and user administration.

use std::io::Read;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tern::admin::{self, AdminCmd};
use tern::config::{Config, Listen};

/// jemalloc, not glibc's malloc: under load glibc spent a tenth of the broker's CPU in malloc,
/// much of it consolidating fastbins whenever a request future (about 2 KiB) was boxed, and
/// it kept Argon2's 19 MiB blocks in per-thread arenas after `free` (10k logins left 8 GiB
/// resident until a fixed mmap threshold was set). jemalloc's size classes and decay purging
/// do neither: broker CPU per message fell about a sixth. Memory came out even: with 19,000
/// idle sessions after 19,000 password logins, 309.7 MiB resident against glibc's 314.3.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An MQTT broker for phones that is also an XMPP domain.
#[derive(Parser)]
#[command(name = "tern", version)]
struct Cli {
    /// Config file (TOML); without it the embedded defaults apply.
    #[arg(long, global = true, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the broker.
    Serve {
        /// Overrides `domain`.
        #[arg(long)]
        domain: Option<String>,
        /// Overrides `mqtt.tcp` (an address, or "off").
        #[arg(long)]
        mqtt_tcp: Option<Listen>,
        /// Overrides `mqtt.tls`.
        #[arg(long)]
        mqtt_tls: Option<Listen>,
        /// Overrides `mqtt.ws`.
        #[arg(long)]
        mqtt_ws: Option<Listen>,
        /// Overrides `metrics.listen`.
        #[arg(long)]
        metrics: Option<Listen>,
        /// Overrides `s2s.listen` (federation; an address, or "off").
        #[arg(long)]
        s2s: Option<Listen>,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Write a self-signed certificate and key for development (the configured TLS paths).
    DevCert {
        /// DNS names or IP addresses the certificate is for.
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user.
    Add {
        /// User name (the localpart of user@domain).
        name: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user.
    Del {
        /// User name.
        name: String,
    },
    /// List users.
    List,
    /// Change a user's password; revokes that user's session tokens.
    Passwd {
        /// User name.
        name: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    match cli.cmd {
        Cmd::Serve { domain, mqtt_tcp, mqtt_tls, mqtt_ws, metrics, s2s } => {
            if let Some(d) = domain {
                config.domain = d;
            }
            config.mqtt.tcp = mqtt_tcp.unwrap_or(config.mqtt.tcp);
            config.mqtt.tls = mqtt_tls.unwrap_or(config.mqtt.tls);
            config.mqtt.ws = mqtt_ws.unwrap_or(config.mqtt.ws);
            config.metrics.listen = metrics.unwrap_or(config.metrics.listen);
            config.s2s.listen = s2s.unwrap_or(config.s2s.listen);
            config.check()?;
            serve(config)
        }
        Cmd::User { cmd } => user(&config, cmd),
        Cmd::DevCert { names } => {
            let (cert, key) = config.tls_paths();
            tern::tls::write_self_signed(&cert, &key, &names)?;
            println!("wrote {} and {}", cert.display(), key.display());
            Ok(())
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        if let Some(addr) = config.metrics.listen.0 {
            tern::metrics::install(addr)?;
        }
        let bound = tern::server::start(config).await?;
        // One line on stdout that scripts can wait for.
        let s2s = bound.s2s.map(|a| format!(" s2s={a}")).unwrap_or_default();
        println!("tern ready tcp={} tls={} ws={}{s2s}", show(bound.tcp), show(bound.tls), show(bound.ws));
        wait_for_stop().await?;
        // Everything acknowledged is already on disk; there is nothing to drain.
        tracing::info!("stopping");
        anyhow::Ok(())
    })
}

async fn wait_for_stop() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

fn show(a: Option<std::net::SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "off".into())
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s.trim_end_matches(['\n', '\r']).to_owned());
    }
    let first = rpassword::prompt_password("password: ")?;
    let again = rpassword::prompt_password("again: ")?;
    anyhow::ensure!(first == again, "the passwords differ");
    Ok(first)
}

fn user(config: &Config, cmd: UserCmd) -> anyhow::Result<()> {
    let cmd = match cmd {
        UserCmd::Add { name, password_stdin } => {
            AdminCmd::Add { user: name, password: read_password(password_stdin)? }
        }
        UserCmd::Passwd { name, password_stdin } => {
            AdminCmd::Passwd { user: name, password: read_password(password_stdin)? }
        }
        UserCmd::Del { name } => AdminCmd::Del { user: name },
        UserCmd::List => AdminCmd::List,
    };
    let result = match admin::send(&admin::socket_path(&config.data_dir), &cmd) {
        Some(r) => r,
        None => {
            // No daemon: work on the store directly (it is ours alone while nothing serves it).
            let db = tern::store::open_db(&config.data_dir)?;
            admin::execute_offline(&db, cmd)
        }
    };
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            Ok(())
        }
        Err(e) => anyhow::bail!(e),
    }
}
