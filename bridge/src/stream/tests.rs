//! Golden and bad-input tests for the stream codec, in the style of xmpp-parsers.

use super::*;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    to='example.net' from='example.org' id='s2s-1' version='1.0' xml:lang='en'>";

fn limits() -> Limits {
    Limits { max_stanza_bytes: 4096, max_depth: 8, max_attrs: 16 }
}

/// Decodes `input` in one feed.
fn decode(input: &[u8]) -> Result<Vec<StreamEvent>, StreamError> {
    StreamDecoder::new(limits()).feed(input)
}

/// Decodes `input` one byte per feed, which must give the same result as one feed.
fn decode_bytewise(input: &[u8]) -> Result<Vec<StreamEvent>, StreamError> {
    let mut dec = StreamDecoder::new(limits());
    let mut events = Vec::new();
    for b in input {
        events.extend(dec.feed(std::slice::from_ref(b))?);
    }
    Ok(events)
}

/// The error `body` causes after a valid header, checked both whole and byte by byte.
fn error_after_header(body: &str) -> StreamError {
    error_of(format!("{HEADER}{body}").as_bytes())
}

/// The error `input` causes, checked both whole and byte by byte.
fn error_of(input: &[u8]) -> StreamError {
    let whole = decode(input).expect_err("input should be rejected");
    let bytewise = decode_bytewise(input).expect_err("input should be rejected bytewise");
    assert_eq!(whole, bytewise, "chunking changed the error for {:?}", String::from_utf8_lossy(input));
    whole
}

/// The single stanza `body` decodes to after a valid header.
fn stanza(body: &str) -> Element {
    let input = format!("{HEADER}{body}");
    let events = decode(input.as_bytes()).unwrap_or_else(|e| panic!("{body:?} should decode: {e}"));
    assert_eq!(decode_bytewise(input.as_bytes()).as_ref(), Ok(&events));
    match &events[..] {
        [StreamEvent::Open { .. }, StreamEvent::Element(e)] => e.clone(),
        other => panic!("expected one stanza from {body:?}, got {other:?}"),
    }
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn s2s_stream_golden() {
    let input = [
        HEADER,
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>",
        "<dialback xmlns='urn:xmpp:features:dialback'/></stream:features>\n",
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        "<db:result from='example.org' to='example.net'>b4835385f37fe289</db:result>",
        "<!-- a comment between stanzas -->  \r\n\t",
        "<message from='juliet@example.org/balcony' to='romeo@example.net' type='chat' id='m&amp;1'>",
        "<body>Wherefore &lt;art&gt; thou &amp; &quot;thy&quot; &apos;friends&apos; &#x263A;&#9731;</body>",
        "<thread>t1</thread></message>",
        "<presence from='juliet@example.org/balcony'><show>away</show>",
        "<status xml:lang='fr'>partie</status>",
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://x.example' ver='QgayPKa='/>",
        "</presence>",
        "<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<message><body><![CDATA[<b>bold</b> & raw]]> then &amp; text<!-- inside --> more</body></message>",
        "<iq type='result' id='r1'><query xmlns='jabber:iq:roster'><item jid='a@b' name='A &amp; B'>",
        "<group>Friends</group></item></query></iq>",
        "</stream:stream>",
    ]
    .concat();

    let features = Element::new("features", NS_STREAMS)
        .with_child(Element::new("starttls", NS_TLS).with_child(Element::new("required", NS_TLS)))
        .with_child(Element::new("dialback", "urn:xmpp:features:dialback"));
    let starttls = Element::new("starttls", NS_TLS);
    let result = Element::new("result", NS_DIALBACK)
        .with_attr("from", "example.org")
        .with_attr("to", "example.net")
        .with_text("b4835385f37fe289");
    let message = Element::new("message", NS_SERVER)
        .with_attr("from", "juliet@example.org/balcony")
        .with_attr("to", "romeo@example.net")
        .with_attr("type", "chat")
        .with_attr("id", "m&1")
        .with_child(
            Element::new("body", NS_SERVER)
                .with_text("Wherefore <art> thou & \"thy\" 'friends' \u{263A}\u{2603}"),
        )
        .with_child(Element::new("thread", NS_SERVER).with_text("t1"));
    let presence = Element::new("presence", NS_SERVER)
        .with_attr("from", "juliet@example.org/balcony")
        .with_child(Element::new("show", NS_SERVER).with_text("away"))
        .with_child(Element::new("status", NS_SERVER).with_attr("xml:lang", "fr").with_text("partie"))
        .with_child(
            Element::new("c", "http://jabber.org/protocol/caps")
                .with_attr("hash", "sha-1")
                .with_attr("node", "http://x.example")
                .with_attr("ver", "QgayPKa="),
        );
    let ping = Element::new("iq", NS_SERVER)
        .with_attr("type", "get")
        .with_attr("id", "p1")
        .with_child(Element::new("ping", "urn:xmpp:ping"));
    let cdata = Element::new("message", NS_SERVER)
        .with_child(Element::new("body", NS_SERVER).with_text("<b>bold</b> & raw then & text more"));
    let roster = Element::new("iq", NS_SERVER).with_attr("type", "result").with_attr("id", "r1").with_child(
        Element::new("query", "jabber:iq:roster").with_child(
            Element::new("item", "jabber:iq:roster")
                .with_attr("jid", "a@b")
                .with_attr("name", "A & B")
                .with_child(Element::new("group", "jabber:iq:roster").with_text("Friends")),
        ),
    );
    let want = vec![
        StreamEvent::Open {
            attrs: attrs(&[
                ("xmlns", "jabber:server"),
                ("xmlns:stream", NS_STREAMS),
                ("xmlns:db", NS_DIALBACK),
                ("to", "example.net"),
                ("from", "example.org"),
                ("id", "s2s-1"),
                ("version", "1.0"),
                ("xml:lang", "en"),
            ]),
        },
        StreamEvent::Element(features),
        StreamEvent::Element(starttls),
        StreamEvent::Element(result),
        StreamEvent::Element(message),
        StreamEvent::Element(presence),
        StreamEvent::Element(ping),
        StreamEvent::Element(cdata),
        StreamEvent::Element(roster),
        StreamEvent::Close,
    ];
    assert_eq!(decode(input.as_bytes()), Ok(want.clone()));
    assert_eq!(decode_bytewise(input.as_bytes()), Ok(want));
}

#[test]
fn header_accessors() {
    let events = decode(HEADER.as_bytes()).unwrap();
    assert_eq!(events[0].header_attr("to"), Some("example.net"));
    assert_eq!(events[0].header_attr("xmlns"), Some(NS_SERVER));
    assert_eq!(events[0].header_attr("nope"), None);
    assert_eq!(StreamEvent::Close.header_attr("to"), None);
}

#[test]
fn element_accessors() {
    let msg = stanza("<message to='a@b'><body>hi </body><x xmlns='urn:x'>no</x>there</message>");
    assert_eq!(msg.name(), "message");
    assert_eq!(msg.ns(), NS_SERVER);
    assert_eq!(msg.attr("to"), Some("a@b"));
    assert_eq!(msg.attr("from"), None);
    assert_eq!(msg.child("body", NS_SERVER).map(Element::text), Some("hi ".to_string()));
    assert!(msg.child("body", "urn:x").is_none());
    assert_eq!(msg.child("x", "urn:x").map(Element::text), Some("no".to_string()));
    assert_eq!(msg.text(), "there");
    assert_eq!(msg.elements().count(), 2);
}

#[test]
fn whitespace_keepalives_produce_nothing() {
    let mut dec = StreamDecoder::new(limits());
    assert_eq!(dec.feed(HEADER.as_bytes()).map(|e| e.len()), Ok(1));
    for _ in 0..3 {
        assert_eq!(dec.feed(b" "), Ok(vec![]));
        assert_eq!(dec.feed(b"\n"), Ok(vec![]));
    }
    // Whitespace far beyond the stanza limit is fine: it never accumulates.
    assert_eq!(dec.feed(&vec![b' '; 10_000]), Ok(vec![]));
    assert!(dec.is_open());
}

#[test]
fn stream_prefixes_resolve_from_the_header() {
    // Element and attribute prefixes declared only on the stream header.
    let verify = stanza("<db:verify from='a' to='b' id='x'>key</db:verify>");
    assert!(verify.is("verify", NS_DIALBACK));
    let msg = stanza("<message db:flag='1' xml:lang='en'><body/></message>");
    assert_eq!(msg.attrs(), attrs(&[("xmlns:db", NS_DIALBACK), ("db:flag", "1"), ("xml:lang", "en")]));
    // A different prefix for the same namespace, and a default-namespace override.
    let iq = stanza("<iq xmlns:p='urn:p'><p:q><r xmlns='urn:r'><s/></r></p:q></iq>");
    let q = iq.child("q", "urn:p").expect("p:q resolves");
    assert!(q.child("r", "urn:r").and_then(|r| r.child("s", "urn:r")).is_some());
    assert_eq!(iq.attrs(), &[]);
}

#[test]
fn text_is_normalised() {
    let msg = stanza("<message x='a\tb\r\nc\rd&#13;e&#10;'><body>1\r\n2\r3&#13;4</body></message>");
    assert_eq!(msg.attr("x"), Some("a b c d\re\n"));
    assert_eq!(msg.child("body", NS_SERVER).unwrap().text(), "1\n2\n3\r4");
    let spaced = stanza("<message\n  x = \"1\"\ty='2' ></message  >");
    assert_eq!(spaced.attrs(), attrs(&[("x", "1"), ("y", "2")]));
}

#[test]
fn utf8_split_inside_a_character() {
    // "☃" is E2 98 83; every split point of the stream must decode the same.
    let input = format!("{HEADER}<message><body>☃ é 😀</body></message>");
    let bytes = input.as_bytes();
    let whole = decode(bytes).unwrap();
    for split in 0..bytes.len() {
        let mut dec = StreamDecoder::new(limits());
        let mut events = dec.feed(&bytes[..split]).unwrap();
        events.extend(dec.feed(&bytes[split..]).unwrap());
        assert_eq!(events, whole, "split at {split}");
    }
}

#[test]
fn empty_feed_inside_the_xml_declaration() {
    // The proptest regression: cuts at 20 and 20 split the declaration between its `?` and `>`
    // with an empty feed in between, which made the decoder miss the `?>` and buffer the whole
    // stream as one unfinished declaration, yielding `Ok([])`.
    let input = format!("{HEADER}<message/></stream:stream>");
    let bytes = input.as_bytes();
    assert_eq!(&bytes[..20], b"<?xml version='1.0'?");
    let whole = decode(bytes).unwrap();
    assert_eq!(whole.len(), 3);
    let mut dec = StreamDecoder::new(limits());
    let mut events = dec.feed(&bytes[..20]).unwrap();
    events.extend(dec.feed(&bytes[20..20]).unwrap());
    events.extend(dec.feed(&bytes[20..]).unwrap());
    assert_eq!(events, whole);
}

#[test]
fn empty_feeds_at_every_split_point() {
    // An empty feed carries no bytes, so it must not disturb a pending token of any kind.
    let input = format!(
        "{HEADER}<!-- a - b --><message a='x>y' b=\"p'q>\"><body>t &amp; u<![CDATA[ ]] ]> ]]>\
         <!-- c - d -->v</body></message>\r\n</stream:stream>"
    );
    let bytes = input.as_bytes();
    let whole = decode(bytes);
    assert!(matches!(whole.as_deref(), Ok([_, StreamEvent::Element(_), StreamEvent::Close])), "{whole:?}");
    for split in 0..=bytes.len() {
        let mut dec = StreamDecoder::new(limits());
        let mut events = Vec::new();
        for chunk in [&bytes[..split], &[], &[], &bytes[split..]] {
            match dec.feed(chunk) {
                Ok(more) => events.extend(more),
                Err(err) => panic!("split at {split}: {err:?}"),
            }
        }
        assert_eq!(Ok(&events), whole.as_ref(), "split at {split}");
    }
}

#[test]
fn restart_with_reset() {
    let mut dec = StreamDecoder::new(limits());
    let first = dec.feed(format!("{HEADER}<starttls xmlns='{NS_TLS}'/><proc").as_bytes()).unwrap();
    assert_eq!(first.len(), 2);
    // After <proceed/> the TLS layer restarts the stream; the partial bytes must be forgotten,
    // and a new header with its own declarations is accepted.
    dec.reset();
    let header = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    let second = dec.feed(format!("{header}<message/>").as_bytes()).unwrap();
    assert_eq!(second[0].header_attr("xmlns"), Some(NS_CLIENT));
    assert_eq!(second[1], StreamEvent::Element(Element::new("message", NS_CLIENT)));
    // Reset also recovers a failed decoder.
    assert_eq!(dec.feed(b"&bogus;"), Err(StreamError::BadFormat));
    assert_eq!(dec.feed(b"<message/>"), Err(StreamError::BadFormat));
    dec.reset();
    assert_eq!(dec.feed(header.as_bytes()).map(|e| e.len()), Ok(1));
}

#[test]
fn restricted_xml() {
    // DTDs and markup declarations, before and inside the stream.
    assert_eq!(error_of(b"<?xml version='1.0'?><!DOCTYPE stream:stream>"), StreamError::RestrictedXml);
    assert_eq!(error_of(b"<!DOCTYPE"), StreamError::RestrictedXml);
    assert_eq!(error_after_header("<!ENTITY x 'y'>"), StreamError::RestrictedXml);
    assert_eq!(error_after_header("<message><!ELEMENT message ANY></message>"), StreamError::RestrictedXml);
    // Billion laughs: rejected at the DOCTYPE, before any entity is declared...
    let laughs = concat!(
        "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>",
        "<!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]>",
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><message>&lol2;</message>"
    );
    assert_eq!(error_of(laughs.as_bytes()), StreamError::RestrictedXml);
    // ...and its references are undeclared entities without the DTD.
    assert_eq!(error_after_header("<message><body>&lol9;</body></message>"), StreamError::RestrictedXml);
    assert_eq!(error_after_header("<message to='&foo;'/>"), StreamError::RestrictedXml);
    assert_eq!(error_after_header("<message><body>a &foo; b</body></message>"), StreamError::RestrictedXml);
    // Processing instructions, and an XML declaration anywhere but first.
    assert_eq!(error_after_header("<?php echo 1; ?>"), StreamError::RestrictedXml);
    assert_eq!(error_after_header("<message><?pi?></message>"), StreamError::RestrictedXml);
    assert_eq!(error_of(b"<?xml-stylesheet href='a'?><stream:stream>"), StreamError::RestrictedXml);
    assert_eq!(error_of(b" <?xml version='1.0'?>"), StreamError::RestrictedXml);
    assert_eq!(error_of(b"<?xml version='1.0'?><?xml version='1.0'?>"), StreamError::RestrictedXml);
}

#[test]
fn policy_limits() {
    let at_limit = |n: usize| format!("<message><body>{}</body></message>", "a".repeat(n));
    let overhead = at_limit(0).len();
    // Exactly max_stanza_bytes is accepted, one more is not, whether the stanza is complete or
    // still arriving.
    stanza(&at_limit(4096 - overhead));
    assert_eq!(error_after_header(&at_limit(4097 - overhead)), StreamError::PolicyViolation);
    assert_eq!(
        error_after_header(&format!("<message><body>{}", "a".repeat(5000))),
        StreamError::PolicyViolation
    );
    assert_eq!(
        error_after_header(&format!("<message to='{}", "a".repeat(5000))),
        StreamError::PolicyViolation
    );
    assert_eq!(error_after_header(&format!("<!-- {}", "a".repeat(5000))), StreamError::PolicyViolation);
    assert_eq!(
        error_of(format!("<stream:stream a='{}'>", "a".repeat(5000)).as_bytes()),
        StreamError::PolicyViolation
    );
    // The limit is per stanza: many stanzas in one feed are fine.
    let many = at_limit(3000).repeat(5);
    assert_eq!(decode(format!("{HEADER}{many}").as_bytes()).map(|e| e.len()), Ok(6));

    // Depth: the stanza is depth 1 and max_depth is 8.
    let nest = |n: usize| format!("{}{}", "<a>".repeat(n), "</a>".repeat(n));
    stanza(&nest(8));
    assert_eq!(error_after_header(&nest(9)), StreamError::PolicyViolation);
    assert_eq!(error_after_header(&"<a>".repeat(100)), StreamError::PolicyViolation);

    // Attributes: max_attrs is 16, namespace declarations included.
    let with_attrs =
        |n: usize| format!("<message {}/>", (0..n).map(|i| format!("a{i}='v' ")).collect::<String>());
    stanza(&with_attrs(16));
    assert_eq!(error_after_header(&with_attrs(17)), StreamError::PolicyViolation);
    let decls = (0..17).map(|i| format!(" xmlns:p{i}='urn:{i}'")).collect::<String>();
    assert_eq!(error_after_header(&format!("<message{decls}/>")), StreamError::PolicyViolation);
}

#[test]
fn not_well_formed() {
    let cases = [
        "<message></presence>",
        "<message><body></message></body>",
        "</message>",
        "</stream>",
        "<message x='1' x='2'/>",
        "<message x='1'y='2'/>",
        "<message x=1/>",
        "<message x/>",
        "<message x='<'/>",
        "<message/ >",
        "<1message/>",
        "<a:b:c/>",
        "< message/>",
        "<>",
        "</>",
        "<message>]]></message>",
        "<message>&#0;</message>",
        "<message>&#xD800;</message>",
        "<message>&#x110000;</message>",
        "<message>&#xFFFE;</message>",
        "<message>&#X41;</message>",
        "<message>&#+65;</message>",
        "<message>&;</message>",
        "<message>& b</message>",
        "<message>&#99999999999999;</message>",
        "<message>\u{1}</message>",
        "<message a='\u{1}'/>",
        "<message><!-- a -- b --></message>",
        "<message><!-- a ---></message>",
        "<!x>",
        "<!-x>",
        "<message><![CDAT[x]]></message>",
        "<message xmlns:p=''/>",
        "<message x='1' p:x='2' xmlns:p='urn:p' q:x='3' xmlns:q='urn:p'/>",
    ];
    for body in cases {
        assert_eq!(error_after_header(body), StreamError::NotWellFormed, "{body:?}");
    }
    // Before the header and after the close.
    assert_eq!(error_of(b"hello"), StreamError::NotWellFormed);
    assert_eq!(error_of(b"<?xml version='2.0'?>"), StreamError::NotWellFormed);
    assert_eq!(error_of(b"<?xml encoding='UTF-8'?>"), StreamError::NotWellFormed);
    assert_eq!(error_of(b"<?xml version='1.0' standalone='maybe'?>"), StreamError::NotWellFormed);
    assert_eq!(error_after_header("</stream:stream> <message/>"), StreamError::NotWellFormed);
    assert_eq!(error_after_header("</stream:stream>x"), StreamError::NotWellFormed);
}

#[test]
fn invalid_utf8_is_not_well_formed() {
    let cases: [&[u8]; 6] = [
        b"<message><body>\xff</body></message>",
        b"<message><body>\xe2\x98</body></message>",
        b"<message><body>\xc0\xaf</body></message>",
        b"<message><body>\xed\xa0\x80</body></message>",
        b"<message to='\xfe'/>",
        b"<mess\xffage/>",
    ];
    for body in cases {
        let input = [HEADER.as_bytes(), body].concat();
        assert_eq!(error_of(&input), StreamError::NotWellFormed, "{:?}", String::from_utf8_lossy(body));
    }
}

#[test]
fn namespace_errors() {
    let with_ns = |stream_ns: &str| {
        format!("<stream:stream xmlns='jabber:server' xmlns:stream='{stream_ns}' to='example.net'>")
    };
    assert_eq!(error_of(with_ns("urn:wrong").as_bytes()), StreamError::InvalidNamespace);
    assert_eq!(error_of(b"<stream xmlns='jabber:client'>"), StreamError::InvalidNamespace);
    assert_eq!(error_of(b"<stream:stream xmlns='jabber:server'>"), StreamError::BadNamespacePrefix);
    assert_eq!(error_of(b"<s:features xmlns:s='http://etherx.jabber.org/streams'>"), StreamError::BadFormat);
    assert_eq!(error_after_header("<foo:message/>"), StreamError::BadNamespacePrefix);
    assert_eq!(error_after_header("<message foo:x='1'/>"), StreamError::BadNamespacePrefix);
    assert_eq!(error_after_header("<xmlns:message/>"), StreamError::BadNamespacePrefix);
    assert_eq!(error_after_header("<xml:message/>"), StreamError::BadNamespacePrefix);
    assert_eq!(error_after_header("<message xmlns:xmlns='urn:x'/>"), StreamError::BadNamespacePrefix);
    assert_eq!(
        error_after_header("<message xmlns:p='http://www.w3.org/XML/1998/namespace'/>"),
        StreamError::BadNamespacePrefix
    );
    assert_eq!(
        error_after_header("<message xmlns='http://www.w3.org/2000/xmlns/'/>"),
        StreamError::InvalidNamespace
    );
    // A prefix declared inside one stanza does not leak into the next.
    assert_eq!(
        error_after_header("<message xmlns:p='urn:p'><p:x/></message><p:x/>"),
        StreamError::BadNamespacePrefix
    );
}

#[test]
fn stream_level_rules() {
    // Text that is not whitespace between stanzas.
    assert_eq!(error_after_header("hello"), StreamError::BadFormat);
    assert_eq!(error_after_header("<message/> x <message/>"), StreamError::BadFormat);
    assert_eq!(error_after_header("<![CDATA[x]]>"), StreamError::BadFormat);
    assert_eq!(error_after_header("&amp;"), StreamError::BadFormat);
    // A self-closed header, and a second header where a restart was not expected.
    assert_eq!(
        error_of(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>"),
        StreamError::BadFormat
    );
    assert_eq!(error_after_header(&HEADER[21..]), StreamError::BadFormat);
    // Whitespace and comments after the close are harmless.
    let closed = decode(format!("{HEADER}</stream:stream>\n<!-- bye -->").as_bytes()).unwrap();
    assert_eq!(closed.last(), Some(&StreamEvent::Close));
    // The close tag must repeat the header's prefix.
    let other_prefix = "<s:stream xmlns:s='http://etherx.jabber.org/streams'><message/></s:stream>";
    assert_eq!(decode(other_prefix.as_bytes()).map(|e| e.len()), Ok(3));
    assert_eq!(
        error_of(b"<s:stream xmlns:s='http://etherx.jabber.org/streams'></stream:stream>"),
        StreamError::NotWellFormed
    );
}

#[test]
fn encodings() {
    assert_eq!(error_of(b"<?xml version='1.0' encoding='ISO-8859-1'?>"), StreamError::UnsupportedEncoding);
    assert_eq!(error_of(b"<?xml version='1.0' encoding='UTF-16'?>"), StreamError::UnsupportedEncoding);
    assert_eq!(error_of(b"\xFE\xFF\x00<"), StreamError::UnsupportedEncoding);
    assert_eq!(error_of(b"\xFF\xFE<\x00"), StreamError::UnsupportedEncoding);
    assert_eq!(error_of(b"<\x00s\x00"), StreamError::UnsupportedEncoding);
    assert_eq!(error_of(b"\x00<\x00s"), StreamError::UnsupportedEncoding);
    // A UTF-8 BOM and any spelling of UTF-8 are fine.
    let bom =
        [b"\xEF\xBB\xBF<?xml version='1.0' encoding='utf-8' standalone='yes'?>", &HEADER.as_bytes()[21..]]
            .concat();
    assert_eq!(decode(&bom).map(|e| e.len()), Ok(1));
    assert_eq!(decode_bytewise(&bom).map(|e| e.len()), Ok(1));
}

#[test]
fn failure_is_sticky() {
    let mut dec = StreamDecoder::new(limits());
    assert_eq!(
        dec.feed(format!("{HEADER}<message/><!DOCTYPE x>").as_bytes()),
        Err(StreamError::RestrictedXml)
    );
    assert_eq!(dec.feed(b"<message/>"), Err(StreamError::RestrictedXml));
    assert!(!dec.is_open());
}

#[test]
fn write_element() {
    let msg = Element::new("message", NS_CLIENT)
        .with_attr("to", "a'b\"c<d>&e\tf\ng\rh")
        .with_child(Element::new("body", NS_CLIENT).with_text("x < y && z > w ]]> \r\n"))
        .with_child(
            Element::new("x", "urn:x")
                .with_child(Element::new("y", "urn:x"))
                .with_child(Element::new("z", "")),
        );
    let mut out = String::new();
    msg.write_to(&mut out);
    assert_eq!(
        out,
        "<message xmlns='jabber:client' to='a&apos;b&quot;c&lt;d&gt;&amp;e&#9;f&#10;g&#13;h'>\
         <body>x &lt; y &amp;&amp; z &gt; w ]]&gt; &#13;\n</body>\
         <x xmlns='urn:x'><y/><z xmlns=''/></x></message>"
    );
    let mut in_stream = String::new();
    msg.write_in_stream(NS_CLIENT, &mut in_stream);
    assert_eq!(in_stream, out.replacen(" xmlns='jabber:client'", "", 1));
    assert_eq!(msg.to_string(), out);
}

#[test]
fn write_stream_elements_with_prefixes() {
    let features = Element::new("features", NS_STREAMS)
        .with_child(Element::new("starttls", NS_TLS).with_child(Element::new("required", NS_TLS)));
    let mut out = String::new();
    features.write_in_stream(NS_SERVER, &mut out);
    assert_eq!(
        out,
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
    );
    let result =
        Element::new("result", NS_DIALBACK).with_attr("from", "a").with_attr("to", "b").with_text("k");
    out.clear();
    result.write_in_stream(NS_SERVER, &mut out);
    assert_eq!(out, "<db:result from='a' to='b'>k</db:result>");
    out.clear();
    result.write_to(&mut out);
    assert_eq!(out, "<db:result xmlns:db='jabber:server:dialback' from='a' to='b'>k</db:result>");
    // Children of a prefixed root inherit the stream's default namespace, not the root's.
    out.clear();
    Element::new("error", NS_STREAMS)
        .with_child(Element::new("x", NS_SERVER))
        .write_in_stream(NS_SERVER, &mut out);
    assert_eq!(out, "<stream:error><x/></stream:error>");
}

#[test]
fn writer_replaces_characters_xml_cannot_carry() {
    let el = Element::new("body", NS_CLIENT).with_attr("a", "\u{0}\u{FFFE}").with_text("a\u{1}b\u{FFFF}");
    let mut out = String::new();
    el.write_in_stream(NS_CLIENT, &mut out);
    assert_eq!(out, "<body a='\u{FFFD}\u{FFFD}'>a\u{FFFD}b\u{FFFD}</body>");
}

#[test]
fn builder_helpers() {
    let mut el =
        Element::new("iq", NS_CLIENT).with_attr("id", "1").with_attr("id", "2").with_text("").with_text("a");
    el.push_text("b");
    assert_eq!(el.attrs(), attrs(&[("id", "2")]));
    assert_eq!(el.children(), &[Node::Text("ab".into())]);
    assert_eq!(el.remove_attr("id"), Some("2".into()));
    assert_eq!(el.remove_attr("id"), None);
    // An xmlns attribute cannot override the element's namespace when written.
    let mut out = String::new();
    Element::new("a", "urn:a").with_attr("xmlns", "urn:b").write_to(&mut out);
    assert_eq!(out, "<a xmlns='urn:a'/>");
}

#[test]
fn write_stream_header() {
    assert_eq!(
        stream_header(NS_SERVER, "example.net", "example.org", Some("i'd"), true),
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         to='example.net' from='example.org' id='i&apos;d' version='1.0'>"
    );
    assert_eq!(
        stream_header(NS_COMPONENT, "", "tern.example", Some("c1"), false),
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' from='tern.example' id='c1'>"
    );
    // Our own header decodes.
    let header = stream_header(NS_CLIENT, "a.example", "b.example", None, false);
    let events = decode(header.as_bytes()).unwrap();
    assert_eq!(events[0].header_attr("to"), Some("a.example"));
    assert_eq!(events[0].header_attr("id"), None);
}

#[test]
fn write_stream_error() {
    assert_eq!(
        stream_error(&StreamError::RestrictedXml),
        "<stream:error><restricted-xml xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
    );
    assert_eq!(
        stream_error(&StreamError::SeeOtherHost("[2001:db8::1]:5269".into())),
        "<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>[2001:db8::1]:5269\
         </see-other-host></stream:error></stream:stream>"
    );
    assert_eq!(stream_close(), "</stream:stream>");
    // What we write, we can read back as one element and a close.
    let input = format!("{HEADER}{}", stream_error(&StreamError::PolicyViolation));
    let events = decode(input.as_bytes()).unwrap();
    let StreamEvent::Element(err) = &events[1] else { panic!("{events:?}") };
    assert!(err.is("error", NS_STREAMS) && err.child("policy-violation", NS_STREAM_ERRORS).is_some());
    assert_eq!(events[2], StreamEvent::Close);
}

#[test]
fn condition_names() {
    let decoder_errors = [
        (StreamError::BadFormat, "bad-format"),
        (StreamError::BadNamespacePrefix, "bad-namespace-prefix"),
        (StreamError::InvalidNamespace, "invalid-namespace"),
        (StreamError::NotWellFormed, "not-well-formed"),
        (StreamError::PolicyViolation, "policy-violation"),
        (StreamError::RestrictedXml, "restricted-xml"),
        (StreamError::UnsupportedEncoding, "unsupported-encoding"),
    ];
    for (err, name) in decoder_errors {
        assert_eq!(err.condition(), name);
    }
    let all = [
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    ];
    for name in all {
        let err = StreamError::from_condition(name, "h.example").unwrap_or_else(|| panic!("{name}"));
        assert_eq!(err.condition(), name);
    }
    assert_eq!(
        StreamError::from_condition("see-other-host", "h"),
        Some(StreamError::SeeOtherHost("h".into()))
    );
    assert_eq!(StreamError::from_condition("text", ""), None);
}

#[test]
fn decoded_elements_write_back_identically() {
    let body = "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
        </stream:features><db:result from='a' to='b'>k</db:result>\
        <message db:x='1' xml:lang='en' to='a&amp;b'><body>&lt;&#13;&#9;x&gt;</body>\
        <p:q xmlns:p='urn:p' p:y='&apos;'><r xmlns=''/></p:q></message>";
    let events = decode(format!("{HEADER}{body}").as_bytes()).unwrap();
    let elements: Vec<&Element> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Element(el) => Some(el),
            _ => None,
        })
        .collect();
    assert_eq!(elements.len(), 3);
    for el in elements {
        let mut standalone = String::new();
        el.write_to(&mut standalone);
        let mut in_stream = String::new();
        el.write_in_stream(NS_SERVER, &mut in_stream);
        for written in [standalone, in_stream] {
            assert_eq!(stanza(&written), *el, "written as {written}");
        }
    }
}

#[test]
fn byte_at_a_time_is_linear() {
    // Each pending token resumes its scan where the last feed stopped; a quadratic rescan would
    // make this take minutes instead of milliseconds.
    let big = "a".repeat(200_000);
    let body =
        format!("<message x='{big}'><body>{big}<![CDATA[{big}]]><!--{big}--></body></message><!--{big}-->");
    let mut dec = StreamDecoder::new(Limits { max_stanza_bytes: 1 << 20, ..limits() });
    let mut events = dec.feed(HEADER.as_bytes()).unwrap();
    for b in body.as_bytes() {
        events.extend(dec.feed(std::slice::from_ref(b)).unwrap());
    }
    let [StreamEvent::Open { .. }, StreamEvent::Element(msg)] = &events[..] else {
        panic!("{}", events.len())
    };
    assert_eq!(msg.attr("x").map(str::len), Some(200_000));
    assert_eq!(msg.child("body", NS_SERVER).map(|b| b.text().len()), Some(400_000));
}
