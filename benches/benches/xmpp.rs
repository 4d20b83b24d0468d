//! The XMPP hot paths of federation: parsing a peer's stream (bytes → stanza elements → typed
//! stanzas) and mapping between stanzas and envelopes both ways, for a 1:1 chat message with a
//! 20-byte body and a receipt request, as an s2s peer sends it.
//!
//! `cargo bench -p tern-bench --bench xmpp`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tern_bridge::mapping::{inbound, outbound};
use tern_bridge::stanza::Stanza;
use tern_bridge::stream::NS_SERVER;
use tern_bridge::{Jid, Limits, StreamDecoder, StreamEvent};
use tern_schemas::v1::{up, Chat};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='xmpp.example.org' to='tern.example.org' version='1.0'>";

const MESSAGE: &str = "<message from='bob@xmpp.example.org/laptop' to='alice@tern.example.org' \
    type='chat' id='kX3b9Q'><body>see you at 8, ok? :)</body>\
    <request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>";

/// A decoder that has read the stream header, as on an established s2s stream.
fn open_decoder() -> StreamDecoder {
    let mut d = StreamDecoder::new(Limits::default());
    let events = d.feed(HEADER.as_bytes()).expect("a valid header");
    assert!(matches!(events.as_slice(), [StreamEvent::Open { .. }]));
    d
}

fn stream_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("xmpp_stream");
    g.throughput(Throughput::Bytes(MESSAGE.len() as u64));
    let mut d = open_decoder();
    g.bench_function("decode_message_element", |b| {
        b.iter(|| black_box(d.feed(black_box(MESSAGE.as_bytes())).expect("valid")))
    });
    // The same bytes arriving in 64-byte TCP segments: the decoder must keep partial state.
    let mut d = open_decoder();
    g.bench_function("decode_message_in_64_byte_chunks", |b| {
        b.iter(|| {
            let mut n = 0;
            for chunk in MESSAGE.as_bytes().chunks(64) {
                n += d.feed(black_box(chunk)).expect("valid").len();
            }
            black_box(n)
        })
    });
    g.finish();
}

fn mapping(c: &mut Criterion) {
    let mut g = c.benchmark_group("xmpp_mapping");
    let el = match open_decoder().feed(MESSAGE.as_bytes()).expect("valid").pop() {
        Some(StreamEvent::Element(el)) => el,
        other => panic!("expected a stanza, got {other:?}"),
    };
    g.bench_function("element_to_stanza", |b| b.iter(|| black_box(Stanza::parse(black_box(&el)))));
    let stanza = Stanza::parse(&el).expect("a valid message");
    assert!(inbound(&stanza).is_some(), "the message maps to an envelope");
    g.bench_function("stanza_to_envelope", |b| b.iter(|| black_box(inbound(black_box(&stanza)))));
    let sender = Jid::parse("alice@tern.example.org/pixel-7a").expect("valid JID");
    let body = up::Body::Chat(Chat {
        peer: "bob@xmpp.example.org".into(),
        body: "see you at 8, ok? :)".into(),
        ..Default::default()
    });
    g.bench_function("envelope_to_stanza", |b| {
        b.iter(|| black_box(outbound(black_box(&sender), "kX3b9Q", black_box(&body))))
    });
    // What the s2s driver does with it next: the element and its bytes on the stream.
    let out = outbound(&sender, "kX3b9Q", &body).expect("maps").expect("a stanza");
    g.bench_function("envelope_to_stanza_bytes", |b| {
        b.iter(|| {
            let stanza = outbound(black_box(&sender), "kX3b9Q", black_box(&body)).expect("maps");
            let mut s = String::with_capacity(256);
            stanza.unwrap_or_else(|| out.clone()).to_element(NS_SERVER).write_to(&mut s);
            black_box(s)
        })
    });
    g.finish();
}

criterion_group!(benches, stream_parse, mapping);
criterion_main!(benches);
