//! The incremental stream decoder: owns a byte buffer, frames it into XML tokens that may span
//! any number of [`StreamDecoder::feed`] calls, and assembles depth-1 elements.
//!
//! Tokens are only decoded once complete, and every token ends on an ASCII delimiter, so a
//! multi-byte UTF-8 character split across chunks is never looked at half-way. Each pending
//! token remembers how far it has been scanned, so feeding a large stanza a byte at a time
//! costs linear, not quadratic, time.

use quick_xml::events::attributes::Attributes;
use quick_xml::name::{
    Namespace, NamespaceError, NamespaceResolver, PrefixDeclaration, QName, ResolveResult,
};
use quick_xml::parser::{CommentParser, ElementParser, Parser, PiParser};

use super::text::{check_chars, decode_attr, decode_text, is_qname, is_xml_space};
use super::{Element, Limits, StreamError, NS_STREAMS, NS_XML};

/// The namespace the `xmlns` prefix is reserved for; no declaration may bind it.
const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const CDATA_OPEN: &[u8] = b"<![CDATA[";

/// Events the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer's `<stream:stream>` header. `attrs` are all its attributes as written
    /// (qualified name, decoded value): `to`, `from`, `id`, `version`, `xml:lang`, and the
    /// namespace declarations (`xmlns`, `xmlns:stream`, `xmlns:db`, ...).
    Open {
        /// The header's attributes in document order.
        attrs: Vec<(String, String)>,
    },
    /// A complete direct child of the stream: a stanza or a stream-level element.
    Element(Element),
    /// The peer's `</stream:stream>`.
    Close,
}

impl StreamEvent {
    /// The value of attribute `name` of an [`Open`](StreamEvent::Open) header; `None` otherwise.
    pub fn header_attr(&self, name: &str) -> Option<&str> {
        match self {
            StreamEvent::Open { attrs } => attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// Where in the stream the decoder is.
#[derive(Debug, Clone)]
enum State {
    /// Nothing consumed yet: the encoding (BOM) has not been checked.
    Start,
    /// Before the stream header. The XML declaration is only allowed as the very first token.
    Prolog { decl_allowed: bool },
    /// Inside `<stream:stream>`.
    Open,
    /// After `</stream:stream>`; only whitespace and comments may follow.
    Closed,
    /// A fatal error was returned; every later feed returns it again.
    Failed(StreamError),
}

/// The token currently being scanned, with how many of its bytes have been searched.
#[derive(Debug, Clone, Copy)]
enum Scan {
    Idle,
    Text(usize),
    StartTag(ElementParser, usize),
    EndTag(ElementParser, usize),
    Comment(CommentParser, usize),
    Cdata(usize),
    Pi(PiParser, usize),
}

/// The kind of a complete token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Whitespace outside any stanza, consumed as it arrives.
    Space,
    Text,
    StartTag,
    EndTag,
    Comment,
    Cdata,
    Pi,
}

/// An element of the current stanza whose end tag has not arrived yet.
#[derive(Debug, Clone)]
struct OpenElement {
    /// The qualified name as written, which the end tag must repeat exactly.
    qname: String,
    element: Element,
}

/// Incremental decoder for one direction of an XMPP stream (RFC 6120 §4).
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    limits: Limits,
    /// Unconsumed input; between feeds it holds only the pending partial token.
    buf: Vec<u8>,
    /// Start of the pending token in `buf` while a feed is being processed.
    pos: usize,
    scan: Scan,
    state: State,
    ns: NamespaceResolver,
    /// The qualified name of the peer's stream element, to match `</stream:stream>`.
    stream_qname: String,
    /// The current stanza's open elements, root first.
    open: Vec<OpenElement>,
    /// Bytes of the current stanza already consumed; zero between stanzas.
    stanza_bytes: usize,
}

impl StreamDecoder {
    /// A decoder expecting a fresh stream, enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        StreamDecoder {
            limits,
            buf: Vec::new(),
            pos: 0,
            scan: Scan::Idle,
            state: State::Start,
            ns: NamespaceResolver::default(),
            stream_qname: String::new(),
            open: Vec::new(),
            stanza_bytes: 0,
        }
    }

    /// Feeds bytes; returns all complete events (or the first fatal error; after an error the
    /// decoder stays failed). Events completed earlier in the same chunk as an error are
    /// dropped with it, since the stream is about to be torn down.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<StreamEvent>, StreamError> {
        if let State::Failed(err) = &self.state {
            return Err(err.clone());
        }
        // Take the buffer out so tokens can borrow it while handlers mutate `self`.
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let result = self.process(&buf, &mut events);
        // Drop consumed bytes once per feed; what remains is one partial token, and scan
        // offsets are relative to its start, so they stay valid.
        buf.drain(..self.pos.min(buf.len()));
        self.pos = 0;
        self.buf = buf;
        match result {
            Ok(()) => Ok(events),
            Err(err) => {
                self.buf = Vec::new();
                self.open = Vec::new();
                self.state = State::Failed(err.clone());
                Err(err)
            }
        }
    }

    /// Forget all state, for the stream restart after STARTTLS / SASL (RFC 6120 §4.3.3).
    ///
    /// Unconsumed bytes are discarded too: anything the peer pipelined before the restart
    /// point must not be interpreted in the new stream (the STARTTLS injection class of bugs).
    pub fn reset(&mut self) {
        *self = StreamDecoder::new(self.limits);
    }

    /// Whether the peer's stream header has been received and its close has not.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Consumes every complete token in `buf[self.pos..]`.
    fn process(&mut self, buf: &[u8], events: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        loop {
            let rest = buf.get(self.pos..).unwrap_or_default();
            if let State::Start = self.state {
                match sniff_encoding(rest)? {
                    Some(skip) => {
                        self.pos += skip;
                        self.state = State::Prolog { decl_allowed: true };
                        continue;
                    }
                    None => return Ok(()),
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
            let Some((kind, len)) = self.next_token(rest)? else {
                // A partial token counts against the limit now, so a peer cannot make us
                // buffer without bound by never finishing it.
                return self.check_size(rest.len());
            };
            let token = rest.get(..len).unwrap_or_default();
            self.pos += len;
            self.scan = Scan::Idle;
            if kind != Kind::Space {
                self.check_size(len)?;
                self.stanza_bytes += len;
            }
            self.handle(kind, token, events)?;
            if self.open.is_empty() {
                self.stanza_bytes = 0;
            }
            if let State::Prolog { decl_allowed } = &mut self.state {
                *decl_allowed = false;
            }
        }
    }

    /// Fails if `more` bytes on top of the current stanza would exceed the stanza limit.
    fn check_size(&self, more: usize) -> Result<(), StreamError> {
        if self.stanza_bytes.saturating_add(more) > self.limits.max_stanza_bytes {
            return Err(StreamError::PolicyViolation);
        }
        Ok(())
    }

    /// Finds the next complete token at the start of `rest`, or `None` if it is not complete
    /// yet. Resumes the scan of a token left pending by an earlier feed.
    fn next_token(&mut self, rest: &[u8]) -> Result<Option<(Kind, usize)>, StreamError> {
        if let Scan::Idle = self.scan {
            if rest.first() != Some(&b'<') && self.open.is_empty() {
                // Whitespace between stanzas (keepalives) is consumed as it arrives, so it
                // never accumulates; anything else is character data at stream level.
                let n = rest.iter().take_while(|b| is_xml_space(**b)).count();
                if n == 0 {
                    return Err(match self.state {
                        State::Open => StreamError::BadFormat,
                        _ => StreamError::NotWellFormed,
                    });
                }
                return Ok(Some((Kind::Space, n)));
            }
            match self.classify(rest)? {
                Some(scan) => self.scan = scan,
                None => return Ok(None),
            }
        }
        let found = match &mut self.scan {
            Scan::Idle => None,
            Scan::Text(done) => find_byte(rest, *done, b'<').map(|i| (Kind::Text, i)),
            Scan::StartTag(parser, done) => feed(parser, rest, done).map(|i| (Kind::StartTag, i + 1)),
            Scan::EndTag(parser, done) => feed(parser, rest, done).map(|i| (Kind::EndTag, i + 1)),
            // CommentParser reports the position just past `-->`.
            Scan::Comment(parser, done) => feed(parser, rest, done).map(|i| (Kind::Comment, i)),
            Scan::Pi(parser, done) => feed(parser, rest, done).map(|i| (Kind::Pi, i + 1)),
            Scan::Cdata(done) => {
                // Back up two bytes in case "]]>" straddles the previous chunk's end.
                let from = done.saturating_sub(2).max(CDATA_OPEN.len());
                let found = rest.get(from..).and_then(|r| r.windows(3).position(|w| w == b"]]>"));
                *done = rest.len();
                found.map(|i| (Kind::Cdata, from + i + 3))
            }
        };
        if found.is_none() {
            if let Scan::Text(done) = &mut self.scan {
                *done = rest.len();
            }
        }
        Ok(found)
    }

    /// Decides what a token starting with `<` is, once enough bytes are there; markup that
    /// XMPP forbids is rejected as soon as it is recognisable.
    fn classify(&self, rest: &[u8]) -> Result<Option<Scan>, StreamError> {
        if rest.first() != Some(&b'<') {
            return Ok(Some(Scan::Text(0)));
        }
        let Some(&second) = rest.get(1) else { return Ok(None) };
        let scan = match second {
            b'/' => Scan::EndTag(ElementParser::default(), 2),
            b'?' => match self.state {
                State::Prolog { decl_allowed: true } => Scan::Pi(PiParser::default(), 2),
                _ => return Err(StreamError::RestrictedXml),
            },
            b'!' => match rest.get(2) {
                None => return Ok(None),
                Some(b'-') => match rest.get(3) {
                    None => return Ok(None),
                    Some(b'-') => Scan::Comment(CommentParser::default(), 4),
                    Some(_) => return Err(StreamError::NotWellFormed),
                },
                Some(b'[') => {
                    if !rest.iter().zip(CDATA_OPEN).all(|(a, b)| a == b) {
                        return Err(StreamError::NotWellFormed);
                    } else if rest.len() < CDATA_OPEN.len() {
                        return Ok(None);
                    } else if !self.open.is_empty() {
                        Scan::Cdata(CDATA_OPEN.len())
                    } else if let State::Open = self.state {
                        return Err(StreamError::BadFormat);
                    } else {
                        return Err(StreamError::NotWellFormed);
                    }
                }
                // <!DOCTYPE, <!ENTITY, <!ELEMENT, <!ATTLIST, <!NOTATION: markup declarations.
                Some(b'A'..=b'Z') => return Err(StreamError::RestrictedXml),
                Some(_) => return Err(StreamError::NotWellFormed),
            },
            _ => Scan::StartTag(ElementParser::default(), 1),
        };
        Ok(Some(scan))
    }

    /// Acts on one complete token.
    fn handle(&mut self, kind: Kind, token: &[u8], events: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        match kind {
            Kind::Space => Ok(()),
            Kind::Text => {
                let mut text = String::new();
                decode_text(utf8(token)?, &mut text)?;
                self.push_text(text);
                Ok(())
            }
            Kind::Cdata => {
                let body = utf8(slice(token, CDATA_OPEN.len(), 3)?)?;
                check_chars(body)?;
                // CDATA is not reference-decoded, but line ends are still normalised.
                self.push_text(body.replace("\r\n", "\n").replace('\r', "\n"));
                Ok(())
            }
            Kind::Comment => {
                let body = utf8(slice(token, 4, 3)?)?;
                check_chars(body)?;
                if body.contains("--") || body.ends_with('-') {
                    return Err(StreamError::NotWellFormed);
                }
                Ok(())
            }
            Kind::Pi => xml_declaration(utf8(slice(token, 2, 2)?)?),
            Kind::StartTag => self.start_tag(utf8(slice(token, 1, 1)?)?, events),
            Kind::EndTag => self.end_tag(utf8(slice(token, 2, 1)?)?, events),
        }
    }

    /// Appends decoded text to the innermost open element (text only reaches here in a stanza).
    fn push_text(&mut self, text: String) {
        if let Some(top) = self.open.last_mut() {
            top.element.push_text(text);
        }
    }

    /// Handles `inner`, the text between `<` and `>` of a start tag.
    fn start_tag(&mut self, inner: &str, events: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let (inner, empty) = match inner.strip_suffix('/') {
            Some(inner) => (inner, true),
            None => (inner, false),
        };
        let name_len = inner.find(|c: char| c.is_ascii() && is_xml_space(c as u8)).unwrap_or(inner.len());
        let qname = &inner[..name_len];
        if !is_qname(qname) {
            return Err(StreamError::NotWellFormed);
        }
        match self.state {
            State::Open if self.open.len() >= self.limits.max_depth => {
                return Err(StreamError::PolicyViolation)
            }
            State::Open | State::Prolog { .. } => {}
            _ => return Err(StreamError::NotWellFormed),
        }
        let attrs = lex_attributes(inner, name_len, self.limits.max_attrs)?;

        // Open a namespace scope for this element, declarations first since they apply to
        // the element's own name and attributes.
        let level = self.ns.level().checked_add(1).ok_or(StreamError::PolicyViolation)?;
        self.ns.set_level(level);
        for (key, value) in &attrs {
            match QName(key).as_namespace_binding() {
                Some(PrefixDeclaration::Default) if value == NS_XML || value == NS_XMLNS => {
                    return Err(StreamError::InvalidNamespace)
                }
                // Namespaces in XML 1.0 only lets the default namespace be undeclared.
                Some(PrefixDeclaration::Named(_)) if value.is_empty() => {
                    return Err(StreamError::NotWellFormed)
                }
                Some(decl) => self.ns.add(decl, Namespace(value)).map_err(namespace_error)?,
                None => {}
            }
        }
        let (local, prefix) = QName(qname).decompose();
        // No element may be named `xmlns:*`, and none is defined in the `xml:` namespace; the
        // latter could not even be written back, as the default namespace may not be bound to it.
        if prefix.is_some_and(|p| p.is_xmlns() || p.is_xml()) {
            return Err(StreamError::BadNamespacePrefix);
        }
        let ns = match self.ns.resolve_element(QName(qname)).0 {
            ResolveResult::Bound(ns) => ns.0.to_owned(),
            ResolveResult::Unbound => String::new(),
            ResolveResult::Unknown(_) => return Err(StreamError::BadNamespacePrefix),
        };
        let local = local.into_inner().to_owned();

        if let State::Prolog { .. } = self.state {
            if ns != NS_STREAMS {
                return Err(StreamError::InvalidNamespace);
            }
            if local != "stream" || empty {
                return Err(StreamError::BadFormat);
            }
            // Prefixed header attributes must still resolve, even though they are kept raw.
            self.element_attrs(&attrs)?;
            self.stream_qname = qname.to_owned();
            self.state = State::Open;
            events.push(StreamEvent::Open { attrs });
            return Ok(());
        }
        if self.open.is_empty() && ns == NS_STREAMS && local == "stream" {
            // A second header inside the stream means the peer restarted and we did not.
            return Err(StreamError::BadFormat);
        }
        let element = Element::from_parts(local, ns, self.element_attrs(&attrs)?);
        if empty {
            self.ns.set_level(level - 1);
            self.finish(element, events);
        } else {
            self.open.push(OpenElement { qname: qname.to_owned(), element });
        }
        Ok(())
    }

    /// The attributes an [`Element`] keeps: declarations dropped, except those its prefixed
    /// attributes need (placed first, in order of first use).
    fn element_attrs(&self, attrs: &[(String, String)]) -> Result<Vec<(String, String)>, StreamError> {
        let mut decls: Vec<(String, String)> = Vec::new();
        let mut kept = Vec::with_capacity(attrs.len());
        // Expanded names of prefixed attributes: two prefixes for one namespace must not
        // smuggle in a duplicate attribute (Namespaces in XML 1.0 §6.3).
        let mut expanded: Vec<(String, &str)> = Vec::new();
        for (key, value) in attrs {
            let qname = QName(key);
            if qname.as_namespace_binding().is_some() {
                continue;
            }
            if let (local, Some(prefix)) = qname.decompose() {
                let uri = match self.ns.resolve_attribute(qname).0 {
                    ResolveResult::Bound(ns) => ns.0.to_owned(),
                    _ => return Err(StreamError::BadNamespacePrefix),
                };
                if expanded.iter().any(|(u, l)| *u == uri && *l == local.into_inner()) {
                    return Err(StreamError::NotWellFormed);
                }
                if !prefix.is_xml() {
                    let decl = format!("xmlns:{}", prefix.into_inner());
                    if !decls.iter().any(|(d, _)| *d == decl) {
                        decls.push((decl, uri.clone()));
                    }
                }
                expanded.push((uri, local.into_inner()));
            }
            kept.push((key.clone(), value.clone()));
        }
        decls.extend(kept);
        Ok(decls)
    }

    /// Handles `inner`, the text between `</` and `>` of an end tag.
    fn end_tag(&mut self, inner: &str, events: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        let qname = inner.trim_end_matches(|c: char| c.is_ascii() && is_xml_space(c as u8));
        if !is_qname(qname) || !matches!(self.state, State::Open) {
            return Err(StreamError::NotWellFormed);
        }
        match self.open.pop() {
            Some(top) if top.qname == qname => {
                self.ns.pop();
                self.finish(top.element, events);
            }
            Some(_) => return Err(StreamError::NotWellFormed),
            None if qname == self.stream_qname => {
                self.ns.pop();
                self.state = State::Closed;
                events.push(StreamEvent::Close);
            }
            None => return Err(StreamError::NotWellFormed),
        }
        Ok(())
    }

    /// Attaches a completed element to its parent, or yields it if it is a stanza.
    fn finish(&mut self, element: Element, events: &mut Vec<StreamEvent>) {
        match self.open.last_mut() {
            Some(parent) => parent.element.push_child(element),
            None => events.push(StreamEvent::Element(element)),
        }
    }
}

/// Checks the first bytes for a non-UTF-8 encoding; returns how many BOM bytes to skip, or
/// `None` until enough bytes have arrived to tell.
fn sniff_encoding(rest: &[u8]) -> Result<Option<usize>, StreamError> {
    if rest.starts_with(UTF8_BOM) {
        return Ok(Some(UTF8_BOM.len()));
    }
    if rest.len() < UTF8_BOM.len() && UTF8_BOM.starts_with(rest) {
        return Ok(None);
    }
    // UTF-16/32 BOMs, or the NUL bytes UTF-16 and UTF-32 put next to an ASCII '<'.
    match rest {
        [0x00 | 0xFE | 0xFF, ..] | [_, 0x00, ..] => Err(StreamError::UnsupportedEncoding),
        [_] => Ok(None),
        _ => Ok(Some(0)),
    }
}

/// Lexes the attributes of a start tag (or XML declaration) after its name, decoding values.
fn lex_attributes(inner: &str, name_len: usize, max: usize) -> Result<Vec<(String, String)>, StreamError> {
    let mut attrs = Vec::new();
    for attr in Attributes::new(inner, name_len) {
        // Duplicates and missing quotes or '=' are all reported by quick-xml as errors.
        let attr = attr.map_err(|_| StreamError::NotWellFormed)?;
        let key = attr.key.0;
        // quick-xml accepts `a='1'b='2'`; XML requires whitespace between attributes. The key
        // borrows from `inner`, so its offset there is the pointer difference.
        let start = (key.as_ptr() as usize).wrapping_sub(inner.as_ptr() as usize);
        let spaced =
            start.checked_sub(1).and_then(|i| inner.as_bytes().get(i)).is_some_and(|b| is_xml_space(*b));
        if !spaced || !is_qname(key) {
            return Err(StreamError::NotWellFormed);
        }
        if attrs.len() >= max {
            return Err(StreamError::PolicyViolation);
        }
        attrs.push((key.to_owned(), decode_attr(&attr.value)?));
    }
    Ok(attrs)
}

/// Checks `inner`, the text between `<?` and `?>` of the only processing instruction allowed:
/// an XML declaration for version 1.x in UTF-8.
fn xml_declaration(inner: &str) -> Result<(), StreamError> {
    let target_len = inner.find(|c: char| c.is_ascii() && is_xml_space(c as u8)).unwrap_or(inner.len());
    if &inner[..target_len] != "xml" {
        return Err(StreamError::RestrictedXml);
    }
    // The declaration is bounded by the stanza limit already; the order check below rejects
    // a fourth pseudo-attribute.
    let attrs = lex_attributes(inner, target_len, usize::MAX)?;
    // The pseudo-attributes are version, then optionally encoding, then optionally standalone.
    let mut expected = ["version", "encoding", "standalone"].into_iter();
    for (i, (key, value)) in attrs.iter().enumerate() {
        let valid_order = expected.by_ref().any(|k| k == key);
        let ok = valid_order
            && match key.as_str() {
                "version" => value
                    .strip_prefix("1.")
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
                "encoding" if value.eq_ignore_ascii_case("UTF-8") => true,
                "encoding" => return Err(StreamError::UnsupportedEncoding),
                _ => value == "yes" || value == "no",
            };
        if !ok || (i == 0 && key != "version") {
            return Err(StreamError::NotWellFormed);
        }
    }
    if attrs.is_empty() {
        return Err(StreamError::NotWellFormed);
    }
    Ok(())
}

/// Resumes a quick-xml end-of-token search over the bytes not yet searched.
///
/// The parser is never fed an empty slice: quick-xml's parsers derive their carried-over state
/// from the last byte they were given, and `PiParser` forgets a trailing `?` when it sees no
/// bytes, so an empty [`StreamDecoder::feed`] between `?` and `>` would hide the end of `?>`.
fn feed(parser: &mut impl Parser, rest: &[u8], done: &mut usize) -> Option<usize> {
    let from = *done;
    let new = rest.get(from..).filter(|new| !new.is_empty())?;
    *done = rest.len();
    parser.feed(new).map(|i| from + i)
}

/// The position of `byte` in `rest` at or after `from`.
fn find_byte(rest: &[u8], from: usize, byte: u8) -> Option<usize> {
    rest.get(from..)?.iter().position(|b| *b == byte).map(|i| from + i)
}

/// `token` without `head` bytes at the front and `tail` at the back.
fn slice(token: &[u8], head: usize, tail: usize) -> Result<&[u8], StreamError> {
    token.get(head..token.len().saturating_sub(tail)).ok_or(StreamError::NotWellFormed)
}

/// The token as UTF-8; invalid UTF-8 is an XML well-formedness error.
fn utf8(bytes: &[u8]) -> Result<&str, StreamError> {
    std::str::from_utf8(bytes).map_err(|_| StreamError::NotWellFormed)
}

/// Maps quick-xml's namespace errors onto stream errors.
fn namespace_error(err: NamespaceError) -> StreamError {
    match err {
        NamespaceError::TooManyBindings(_) | NamespaceError::TooDeeplyNested(_) => {
            StreamError::PolicyViolation
        }
        _ => StreamError::BadNamespacePrefix,
    }
}
