//! The inbox hot path (tern's store: a journal in front of sled): appending a 1:1 chat message
//! (the recipient's entry, the sender's copy and the dedupe record in one batch), reading a
//! session's next entries after its cursor, and the acknowledgement (cursor write). Without the
//! group commit, which writers share; `append_then_flush` shows one writer paying for its own
//! journal write and fdatasync (`[inbox] sync = "always"`).
//!
//! `cargo bench -p tern-bench --bench inbox`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tern::config::SyncPolicy;
use tern::ids::{DeviceId, MsgId, Seq, UserName};
use tern::store::inbox::{Delivery, Inbox};
use tern::store::{Durability, Store};
use tern_schemas::v1::{down, Chat, Down};

struct Fixture {
    /// One group commit: the journal write and its fdatasync.
    flush: Box<dyn Fn()>,
    inbox: Arc<Inbox>,
    alice: UserName,
    bob: UserName,
    phone: DeviceId,
    next_id: u64,
    _dir: TempDir,
}

/// A scratch directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("tern-bench-inbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let durability = Durability::new(SyncPolicy::Always, Duration::from_millis(100));
    let store = runtime.block_on(async { Store::open(&dir, durability) }).expect("a scratch store");
    let inbox = store.inbox.clone();
    Fixture {
        flush: Box::new(move || {
            runtime.block_on(store.committer.durable()).expect("a group commit");
        }),
        inbox,
        alice: UserName::parse("alice").expect("valid"),
        bob: UserName::parse("bob").expect("valid"),
        phone: DeviceId::parse("pixel-7a").expect("valid"),
        next_id: 0,
        _dir: TempDir(dir),
    }
}

impl Fixture {
    /// Appends what `hub::apply` stores for alice's chat message to bob.
    fn append_chat(&mut self) {
        self.next_id += 1;
        let id = MsgId::parse(&format!("m{}", self.next_id)).expect("valid");
        let chat = |peer: &str, outgoing| Chat {
            peer: peer.into(),
            body: "see you at 8, ok? :)".into(),
            ts: 1_795_000_000_123,
            outgoing,
            ..Default::default()
        };
        let down = |c| Down {
            seq: 0,
            id: id.as_str().into(),
            body: Some(down::Body::Chat(c)),
            ..Default::default()
        };
        let deliveries = vec![
            Delivery {
                user: self.bob.clone(),
                origin: None,
                down: down(chat("alice@tern.example/pixel-7a", false)),
            },
            Delivery {
                user: self.alice.clone(),
                origin: Some(self.phone.clone()),
                down: down(chat("bob@tern.example", true)),
            },
        ];
        let r = self.inbox.append(Some((&self.alice, &self.phone, &id)), 1_795_000_000_123, deliveries);
        black_box(r.expect("append"));
    }
}

fn inbox(c: &mut Criterion) {
    let mut g = c.benchmark_group("inbox");
    let mut f = fixture("append");
    g.bench_function("append_chat", |b| b.iter(|| f.append_chat()));

    let mut f = fixture("read");
    for _ in 0..1000 {
        f.append_chat();
    }
    f.inbox.mark_durable(&f.inbox.take_pending());
    let mut cursor = 0u64;
    g.bench_function("read_16_after_cursor", |b| {
        b.iter(|| {
            let entries = f.inbox.read(&f.bob, Seq(cursor), 16).expect("read");
            cursor = entries.last().map_or(0, |e| e.seq.0) % 960;
            black_box(entries)
        })
    });
    let mut seq = 0u64;
    g.bench_function("ack_set_cursor", |b| {
        b.iter(|| {
            seq += 1;
            f.inbox.set_cursor(&f.bob, &f.phone, Seq(seq)).expect("cursor");
        })
    });
    g.sample_size(20);
    let mut f = fixture("flush");
    g.bench_function("append_then_flush", |b| {
        b.iter(|| {
            f.append_chat();
            (f.flush)();
        })
    });
    g.finish();
}

criterion_group!(benches, inbox);
criterion_main!(benches);
