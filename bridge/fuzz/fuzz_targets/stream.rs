//! Fuzzes `StreamDecoder::feed` with arbitrary bytes in two chunks (the first byte picks the
//! split): it must never panic, once it fails it must keep returning the same error, and every
//! element it yields must survive `Element::write_to` and decoding again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_bridge::stream::{stream_header, Element, Limits, StreamDecoder, StreamEvent, NS_CLIENT};

fn assert_round_trips(el: &Element) {
    let mut input = stream_header(NS_CLIENT, "a", "b", None, true);
    el.write_to(&mut input);
    // Escaping can grow text, and an element's prefix declarations add attributes.
    let roomy = Limits { max_stanza_bytes: usize::MAX, max_depth: 64, max_attrs: 1024 };
    let events = StreamDecoder::new(roomy).feed(input.as_bytes());
    match events.as_deref() {
        Ok([StreamEvent::Open { .. }, StreamEvent::Element(got)]) => assert_eq!(got, el, "from {input}"),
        other => panic!("{other:?} from {input}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let (first, second) = rest.split_at(usize::from(split).min(rest.len()));
    // Small limits so the fuzzer reaches the limit paths with short inputs.
    let mut dec = StreamDecoder::new(Limits { max_stanza_bytes: 4096, max_depth: 8, max_attrs: 16 });
    let mut failed = None;
    for chunk in [first, second] {
        match dec.feed(chunk) {
            Ok(events) => {
                for event in &events {
                    if let StreamEvent::Element(el) = event {
                        assert_round_trips(el);
                    }
                }
            }
            Err(err) => {
                failed = Some(err);
                break;
            }
        }
    }
    if let Some(err) = failed {
        assert_eq!(dec.feed(b"<message/>"), Err(err));
    }
});
