//! Stanzas of RFC 6120 §8 and RFC 6121: message, presence, iq, and stanza errors.
//!
//! Each type parses from an [`Element`] in any of the three stanza namespaces (`jabber:server`,
//! `jabber:client`, `jabber:component:accept`) and writes back with the namespace the caller
//! names, because the same stanza crosses s2s, c2s and component streams.

mod error;
mod iq;
mod message;
mod presence;

pub use error::{Condition, ErrorType, StanzaError, NS_STANZAS};
pub use iq::{Iq, IqType};
pub use message::{Message, MessageType};
pub use presence::{Presence, PresenceType, Show};

use crate::jid::{Jid, JidError};
use crate::stream::{Element, NS_CLIENT, NS_COMPONENT, NS_SERVER};

/// Why an element is not a valid stanza.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StanzaParseError {
    /// Not the expected element, or not in a stanza namespace.
    #[error("expected <{expected}/> in a stanza namespace, got <{name}/> in {ns:?}")]
    WrongElement {
        /// What was expected (`message`, `iq`, ...).
        expected: &'static str,
        /// The element's local name.
        name: String,
        /// The element's namespace.
        ns: String,
    },
    /// A `from`, `to` or `by` attribute that is not a valid JID.
    #[error("attribute {attr} is not a valid JID: {error}")]
    BadJid {
        /// The attribute name.
        attr: &'static str,
        /// Why it does not parse.
        error: JidError,
    },
    /// A required attribute is absent (`id` and `type` of an iq, `type` of an error).
    #[error("missing attribute {0}")]
    MissingAttr(&'static str),
    /// An attribute or child has a value outside its defined set.
    #[error("invalid {what}: {value:?}")]
    BadValue {
        /// What was being read (`message type`, `show`, `priority`, ...).
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// A child that may occur at most once occurs again.
    #[error("<{0}/> occurs more than once")]
    Duplicate(&'static str),
    /// An iq with the wrong number of payload elements (RFC 6120 §8.2.3).
    #[error("an iq of type {type_} has {found} payload elements")]
    IqPayloadCount {
        /// The iq type (`get`, `set`, `result`).
        type_: &'static str,
        /// How many payload children it has.
        found: usize,
    },
    /// A stanza of type `error` without an `<error/>` child (RFC 6120 §8.3.1).
    #[error("a stanza of type error has no <error/> child")]
    MissingError,
    /// An `<error/>` without a defined condition element (RFC 6120 §8.3.2).
    #[error("<error/> has no defined condition")]
    MissingCondition,
}

/// Any of the three stanza kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stanza {
    /// A `<message/>`.
    Message(Message),
    /// A `<presence/>`.
    Presence(Presence),
    /// An `<iq/>`.
    Iq(Iq),
}

impl Stanza {
    /// Parses a message, presence or iq in any stanza namespace.
    pub fn parse(el: &Element) -> Result<Stanza, StanzaParseError> {
        match el.name() {
            "message" => Message::parse(el).map(Stanza::Message),
            "presence" => Presence::parse(el).map(Stanza::Presence),
            "iq" => Iq::parse(el).map(Stanza::Iq),
            _ => Err(wrong(el, "message, presence or iq")),
        }
    }

    /// The stanza as an element in namespace `ns`.
    pub fn to_element(&self, ns: &str) -> Element {
        match self {
            Stanza::Message(m) => m.to_element(ns),
            Stanza::Presence(p) => p.to_element(ns),
            Stanza::Iq(i) => i.to_element(ns),
        }
    }
}

impl TryFrom<&Element> for Stanza {
    type Error = StanzaParseError;
    fn try_from(el: &Element) -> Result<Self, Self::Error> {
        Stanza::parse(el)
    }
}

/// Builds the error reply to any stanza element, even one that does not parse, by swapping the
/// raw `from`/`to` and keeping the `id`. `None` for a stanza of type `error`, which must never
/// be answered (RFC 6120 §8.3.1), and for elements that are not stanzas.
pub fn error_reply(stanza: &Element, error: &StanzaError) -> Option<Element> {
    if !matches!(stanza.name(), "message" | "presence" | "iq") || stanza.attr("type") == Some("error") {
        return None;
    }
    let ns = stanza.ns();
    let mut reply = Element::new(stanza.name(), ns);
    set_opt(&mut reply, "from", stanza.attr("to"));
    set_opt(&mut reply, "to", stanza.attr("from"));
    set_opt(&mut reply, "id", stanza.attr("id"));
    reply.set_attr("type", "error");
    reply.push_child(error.to_element(ns));
    Some(reply)
}

/// Whether `ns` is one of the namespaces stanzas travel in.
pub fn is_stanza_ns(ns: &str) -> bool {
    ns == NS_SERVER || ns == NS_CLIENT || ns == NS_COMPONENT
}

/// Checks that `el` is `<name/>` in a stanza namespace.
fn expect(el: &Element, name: &'static str) -> Result<(), StanzaParseError> {
    if el.name() == name && is_stanza_ns(el.ns()) {
        Ok(())
    } else {
        Err(wrong(el, name))
    }
}

fn wrong(el: &Element, expected: &'static str) -> StanzaParseError {
    StanzaParseError::WrongElement { expected, name: el.name().to_owned(), ns: el.ns().to_owned() }
}

/// Reads an optional JID attribute.
fn jid_attr(el: &Element, attr: &'static str) -> Result<Option<Jid>, StanzaParseError> {
    el.attr(attr).map(|s| Jid::parse(s).map_err(|error| StanzaParseError::BadJid { attr, error })).transpose()
}

/// Sets `name` when `value` is present.
fn set_opt(el: &mut Element, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        el.set_attr(name, v);
    }
}

/// Writes the attributes every stanza shares.
fn set_common(el: &mut Element, from: &Option<Jid>, to: &Option<Jid>, id: Option<&str>) {
    set_opt(el, "from", from.as_ref().map(|j| j.to_string()).as_deref());
    set_opt(el, "to", to.as_ref().map(|j| j.to_string()).as_deref());
    set_opt(el, "id", id);
}

/// Stores the text of `child` in `slot`, or fails if the slot is already taken.
fn once(slot: &mut Option<String>, child: &Element, name: &'static str) -> Result<(), StanzaParseError> {
    if slot.is_some() {
        return Err(StanzaParseError::Duplicate(name));
    }
    *slot = Some(child.text());
    Ok(())
}

/// `<name>text</name>` in `ns`.
fn text_el(name: &str, ns: &str, text: &str) -> Element {
    Element::new(name, ns).with_text(text)
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::stream::{Element, Limits, StreamDecoder, StreamEvent};

    /// Decodes one stanza as it would arrive on an s2s stream from Prosody.
    pub(crate) fn parse_xml(xml: &str) -> Element {
        let input = format!(
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
             version='1.0'>{xml}"
        );
        let events = StreamDecoder::new(Limits::default()).feed(input.as_bytes()).unwrap();
        match events.into_iter().nth(1) {
            Some(StreamEvent::Element(e)) => e,
            other => panic!("{xml:?} is not one element: {other:?}"),
        }
    }
}
