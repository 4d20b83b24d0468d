//! Encode and decode of the chat envelopes, with a 20-byte body: `Up{chat}` as a phone sends
//! it, `Down{chat}` as tern delivers it (sender's full JID, seq and server timestamp added).
//!
//! `cargo bench -p tern-bench --bench envelope`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use tern_schemas::v1::{down, up, Chat, Down, Up};

const BODY: &str = "see you at 8, ok? :)";

fn up_chat() -> Up {
    Up {
        id: "kX3b9Q".into(),
        body: Some(up::Body::Chat(Chat {
            peer: "bob@example.org".into(),
            body: BODY.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn down_chat() -> Down {
    Down {
        seq: 18_237,
        id: "kX3b9Q".into(),
        body: Some(down::Body::Chat(Chat {
            peer: "alice@example.org/pixel-7a".into(),
            body: BODY.into(),
            ts: 1_795_000_000_123,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn envelopes(c: &mut Criterion) {
    assert_eq!(BODY.len(), 20);
    let up = up_chat();
    let down = down_chat();
    let up_bytes = up.encode_to_vec();
    let down_bytes = down.encode_to_vec();

    // Stable ids (for baselines); the throughput is in payload bytes.
    let mut g = c.benchmark_group("up_chat");
    g.throughput(Throughput::Bytes(up_bytes.len() as u64));
    g.bench_function("encode", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            buf.clear();
            black_box(&up).encode(&mut buf).unwrap();
            black_box(buf.len())
        })
    });
    g.bench_function("encode_to_vec", |b| b.iter(|| black_box(&up).encode_to_vec()));
    g.bench_function("decode", |b| b.iter(|| Up::decode(black_box(up_bytes.as_slice())).unwrap()));
    g.finish();

    let mut g = c.benchmark_group("down_chat");
    g.throughput(Throughput::Bytes(down_bytes.len() as u64));
    g.bench_function("encode", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            buf.clear();
            black_box(&down).encode(&mut buf).unwrap();
            black_box(buf.len())
        })
    });
    g.bench_function("encode_to_vec", |b| b.iter(|| black_box(&down).encode_to_vec()));
    g.bench_function("decode", |b| b.iter(|| Down::decode(black_box(down_bytes.as_slice())).unwrap()));
    g.finish();
}

criterion_group!(benches, envelopes);
criterion_main!(benches);
