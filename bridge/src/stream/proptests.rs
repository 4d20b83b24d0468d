//! Property tests: chunking invariance, no panics on hostile input, writer/decoder round trip.

use super::*;
use proptest::prelude::*;

fn limits() -> Limits {
    Limits { max_stanza_bytes: 64 * 1024, max_depth: 16, max_attrs: 32 }
}

/// An NCName; never `xmlns` or a name that `xml` prefixes could make special.
fn name() -> impl Strategy<Value = String> {
    "[a-wA-Z_\u{e9}\u{4e2d}][a-zA-Z0-9_.\u{b7}\u{e9}-]{0,6}"
}

/// Namespaces including ones that need escaping and the two written with prefixes.
fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(NS_CLIENT.to_string()),
        Just("urn:a".to_string()),
        Just("urn:x?a=1&b='2'<\">".to_string()),
        Just(NS_STREAMS.to_string()),
        Just(NS_DIALBACK.to_string()),
    ]
}

/// Any text XML can carry, biased towards the characters that need escaping.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[\t\n\r\x20-\u{D7FF}\u{E000}-\u{FFFD}\u{10000}-\u{10FFFF}]{0,12}",
        "[<>&'\"\\]\r\n\t a]{0,12}",
    ]
}

/// A childless element with up to three attributes.
fn leaf() -> impl Strategy<Value = Element> {
    let attr_name = prop_oneof![name(), Just("xml:lang".to_string())];
    (name(), namespace(), proptest::collection::vec((attr_name, text()), 0..4)).prop_map(
        |(name, ns, attrs)| {
            let mut el = Element::new(name, ns);
            for (k, v) in attrs {
                el.set_attr(k, v);
            }
            el
        },
    )
}

/// An element tree built only through the public builder.
fn element() -> impl Strategy<Value = Element> {
    leaf().prop_recursive(4, 32, 4, |inner| {
        let child = prop_oneof![inner.prop_map(Ok), text().prop_map(Err)];
        (leaf(), proptest::collection::vec(child, 0..4)).prop_map(|(mut el, children)| {
            for child in children {
                match child {
                    Ok(c) => el.push_child(c),
                    Err(t) => el.push_text(t),
                }
            }
            el
        })
    })
}

/// A stanza root: anything but a nested `<stream:stream>`, which the decoder rejects.
fn stanza() -> impl Strategy<Value = Element> {
    element().prop_filter("nested stream header", |e| !e.is("stream", NS_STREAMS))
}

/// A valid s2s stream: header, generated stanzas with keepalives and comments between, close.
fn valid_stream() -> impl Strategy<Value = String> {
    let gap = prop_oneof![Just(""), Just(" "), Just("\r\n\t"), Just("<!-- k -->")];
    proptest::collection::vec((stanza(), gap), 0..6).prop_map(|items| {
        let mut out = stream_header(NS_SERVER, "example.net", "example.org", Some("id1"), true);
        out.push_str(
            "<message to='a@example.net'><body>fixed &amp; &#x263A; <![CDATA[<x>]]></body></message>",
        );
        for (el, gap) in items {
            el.write_in_stream(NS_SERVER, &mut out);
            out.push_str(gap);
        }
        out.push_str(stream_close());
        out
    })
}

/// Feeds `input` split at `cuts` (taken modulo its length), stopping at the first error.
fn feed_chunked(input: &[u8], cuts: &[usize]) -> Result<Vec<StreamEvent>, StreamError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    let mut dec = StreamDecoder::new(limits());
    let mut events = Vec::new();
    for w in points.windows(2) {
        events.extend(dec.feed(&input[w[0]..w[1]])?);
    }
    Ok(events)
}

/// Checks that an element the decoder accepted is written back in a form that decodes to it.
fn assert_round_trips(el: &Element) {
    let mut input = stream_header(NS_CLIENT, "a", "b", None, true);
    el.write_to(&mut input);
    // Escaping can grow text fourfold, and the declarations an element carries for its prefixed
    // attributes add attributes, so the second pass gets room to spare.
    let roomy = Limits { max_stanza_bytes: usize::MAX, max_depth: 64, max_attrs: 1024 };
    let events = StreamDecoder::new(roomy).feed(input.as_bytes());
    match events.as_deref() {
        Ok([StreamEvent::Open { .. }, StreamEvent::Element(got)]) => assert_eq!(got, el, "from {input}"),
        other => panic!("{other:?} from {input}"),
    }
}

/// Feeds `input` in chunks and checks the decoder's contract instead of the result: failure is
/// sticky, and whatever elements it yields survive a write/decode round trip.
fn feed_hostile(input: &[u8], cuts: &[usize]) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    let mut dec = StreamDecoder::new(limits());
    for w in points.windows(2) {
        match dec.feed(&input[w[0]..w[1]]) {
            Ok(events) => {
                for event in &events {
                    if let StreamEvent::Element(el) = event {
                        assert_round_trips(el);
                    }
                }
            }
            Err(err) => {
                assert_eq!(dec.feed(b"<message/>"), Err(err));
                return;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunking_does_not_change_events(stream in valid_stream(), cuts in proptest::collection::vec(any::<usize>(), 0..24)) {
        let whole = StreamDecoder::new(limits()).feed(stream.as_bytes());
        prop_assert!(whole.is_ok(), "valid stream rejected: {:?}\n{}", whole, stream);
        prop_assert_eq!(feed_chunked(stream.as_bytes(), &cuts), whole);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        feed_hostile(&bytes, &cuts);
        // Also after a valid header, so the stanza paths see the garbage.
        let mut input = stream_header(NS_SERVER, "a", "b", None, true).into_bytes();
        input.extend_from_slice(&bytes);
        feed_hostile(&input, &cuts);
    }

    #[test]
    fn mutated_streams_never_panic(
        stream in valid_stream(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut bytes = stream.into_bytes();
        for (at, byte, op) in edits {
            let at = at % (bytes.len() + 1);
            match op {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => { bytes.remove(at); }
                _ => {}
            }
        }
        feed_hostile(&bytes, &cuts);
    }

    #[test]
    fn write_then_decode_round_trips(el in stanza()) {
        let header = stream_header(NS_CLIENT, "a.example", "b.example", None, true);
        let mut standalone = String::new();
        el.write_to(&mut standalone);
        let mut in_stream = String::new();
        el.write_in_stream(NS_CLIENT, &mut in_stream);
        for body in [standalone, in_stream] {
            let input = format!("{header}{body}{}", stream_close());
            let events = StreamDecoder::new(limits()).feed(input.as_bytes());
            match events.as_deref() {
                Ok([StreamEvent::Open { .. }, StreamEvent::Element(got), StreamEvent::Close]) => {
                    prop_assert_eq!(got, &el, "written as {}", body);
                }
                other => prop_assert!(false, "{:?} from {}", other, body),
            }
        }
    }
}
