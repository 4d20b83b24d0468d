//! Message stanzas (RFC 6120 §8.2.1, RFC 6121 §5).

use super::{expect, jid_attr, once, set_common, text_el, StanzaError, StanzaParseError};
use crate::jid::Jid;
use crate::stream::Element;

/// How a message is meant (RFC 6121 §5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MessageType {
    /// One-to-one conversation.
    Chat,
    /// A message outside a conversation; the default when `type` is absent.
    #[default]
    Normal,
    /// Multi-user chat.
    Groupchat,
    /// An alert or notification that expects no reply.
    Headline,
    /// An error about a message sent earlier.
    Error,
}

impl MessageType {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Chat => "chat",
            MessageType::Normal => "normal",
            MessageType::Groupchat => "groupchat",
            MessageType::Headline => "headline",
            MessageType::Error => "error",
        }
    }

    /// Parses the attribute value.
    pub fn parse(s: &str) -> Option<MessageType> {
        Some(match s {
            "chat" => MessageType::Chat,
            "normal" => MessageType::Normal,
            "groupchat" => MessageType::Groupchat,
            "headline" => MessageType::Headline,
            "error" => MessageType::Error,
            _ => return None,
        })
    }
}

/// A `<message/>` stanza.
///
/// Only the first `<body/>` and `<subject/>` are modelled; further ones (other `xml:lang`s) stay
/// in `payloads` with every other unknown child, so nothing is lost on the way through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The sender.
    pub from: Option<Jid>,
    /// The recipient.
    pub to: Option<Jid>,
    /// The stanza id.
    pub id: Option<String>,
    /// The message type (`normal` when absent).
    pub type_: MessageType,
    /// The text of the first `<body/>`.
    pub body: Option<String>,
    /// The conversation thread (its `parent` attribute is not kept).
    pub thread: Option<String>,
    /// The text of the first `<subject/>`.
    pub subject: Option<String>,
    /// The error, for a message of type `error`.
    pub error: Option<StanzaError>,
    /// Every other child element, in order (extensions such as receipts or chat states).
    pub payloads: Vec<Element>,
}

impl Message {
    /// An empty message of type `type_`.
    pub fn new(type_: MessageType) -> Message {
        Message { type_, ..Message::default() }
    }

    /// The first payload `name` in namespace `ns`.
    pub fn payload(&self, name: &str, ns: &str) -> Option<&Element> {
        self.payloads.iter().find(|p| p.is(name, ns))
    }

    /// Parses a `<message/>` in any stanza namespace.
    pub fn parse(el: &Element) -> Result<Message, StanzaParseError> {
        expect(el, "message")?;
        let type_ = match el.attr("type") {
            None => MessageType::Normal,
            Some(t) => MessageType::parse(t)
                .ok_or_else(|| StanzaParseError::BadValue { what: "message type", value: t.to_owned() })?,
        };
        let mut msg = Message {
            from: jid_attr(el, "from")?,
            to: jid_attr(el, "to")?,
            id: el.attr("id").map(str::to_owned),
            type_,
            ..Message::default()
        };
        let ns = el.ns();
        for child in el.elements() {
            if child.ns() != ns {
                msg.payloads.push(child.clone());
                continue;
            }
            match child.name() {
                "body" if msg.body.is_none() => msg.body = Some(child.text()),
                "subject" if msg.subject.is_none() => msg.subject = Some(child.text()),
                "thread" => once(&mut msg.thread, child, "thread")?,
                // Only an error stanza's `<error/>` means anything (RFC 6120 §8.3.1).
                "error" if type_ == MessageType::Error && msg.error.is_none() => {
                    msg.error = Some(StanzaError::parse(child)?)
                }
                _ => msg.payloads.push(child.clone()),
            }
        }
        if type_ == MessageType::Error && msg.error.is_none() {
            return Err(StanzaParseError::MissingError);
        }
        Ok(msg)
    }

    /// The message as an element in stanza namespace `ns`.
    pub fn to_element(&self, ns: &str) -> Element {
        let mut el = Element::new("message", ns);
        set_common(&mut el, &self.from, &self.to, self.id.as_deref());
        // `normal` is the default, so it is left implicit as most servers do.
        if self.type_ != MessageType::Normal {
            el.set_attr("type", self.type_.as_str());
        }
        if let Some(subject) = &self.subject {
            el.push_child(text_el("subject", ns, subject));
        }
        if let Some(body) = &self.body {
            el.push_child(text_el("body", ns, body));
        }
        if let Some(thread) = &self.thread {
            el.push_child(text_el("thread", ns, thread));
        }
        for p in &self.payloads {
            el.push_child(p.clone());
        }
        if let Some(error) = &self.error {
            el.push_child(error.to_element(ns));
        }
        el
    }

    /// The error reply to this message: addresses swapped, same id, type `error`.
    pub fn error_reply(&self, error: StanzaError) -> Message {
        Message {
            from: self.to.clone(),
            to: self.from.clone(),
            id: self.id.clone(),
            type_: MessageType::Error,
            error: Some(error),
            ..Message::default()
        }
    }
}

impl TryFrom<&Element> for Message {
    type Error = StanzaParseError;
    fn try_from(el: &Element) -> Result<Self, Self::Error> {
        Message::parse(el)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jid::JidError;
    use crate::stanza::tests::parse_xml;
    use crate::stanza::{Condition, ErrorType};
    use crate::stream::{NS_COMPONENT, NS_SERVER};

    fn jid(s: &str) -> Option<Jid> {
        Some(Jid::parse(s).unwrap())
    }

    #[test]
    fn parses_conversations_chat() {
        let el = parse_xml(
            "<message xmlns='jabber:server' from='romeo@montague.example/orchard' \
             to='juliet@tern.test' type='chat' id='b4e3f2' xml:lang='en'>\
             <body>Art thou not Romeo?</body><thread>e0ffe42b</thread>\
             <request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/>\
             <active xmlns='http://jabber.org/protocol/chatstates'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='b4e3f2'/></message>",
        );
        let msg = Message::parse(&el).unwrap();
        assert_eq!(msg.from, jid("romeo@montague.example/orchard"));
        assert_eq!(msg.to, jid("juliet@tern.test"));
        assert_eq!(msg.id.as_deref(), Some("b4e3f2"));
        assert_eq!(msg.type_, MessageType::Chat);
        assert_eq!(msg.body.as_deref(), Some("Art thou not Romeo?"));
        assert_eq!(msg.thread.as_deref(), Some("e0ffe42b"));
        assert_eq!(msg.subject, None);
        let names: Vec<_> = msg.payloads.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["request", "markable", "active", "origin-id"]);
        assert!(msg.payload("request", "urn:xmpp:receipts").is_some());
    }

    #[test]
    fn round_trips() {
        let msg = Message {
            from: jid("alice@tern.test/phone"),
            to: jid("bob@example.org"),
            id: Some("m1".into()),
            type_: MessageType::Chat,
            body: Some("hi <3 & bye".into()),
            thread: Some("t".into()),
            subject: Some("s".into()),
            error: None,
            payloads: vec![Element::new("request", "urn:xmpp:receipts")],
        };
        let el = msg.to_element(NS_SERVER);
        assert_eq!(
            el.to_string(),
            "<message xmlns='jabber:server' from='alice@tern.test/phone' to='bob@example.org' id='m1' \
             type='chat'><subject>s</subject><body>hi &lt;3 &amp; bye</body><thread>t</thread>\
             <request xmlns='urn:xmpp:receipts'/></message>"
        );
        assert_eq!(Message::parse(&el), Ok(msg.clone()));
        assert_eq!(Message::parse(&msg.to_element(NS_COMPONENT)), Ok(msg));
    }

    #[test]
    fn extra_languages_stay_in_payloads() {
        let el = parse_xml(
            "<message xmlns='jabber:server' to='a@b'><body>hi</body><body xml:lang='de'>hallo</body></message>",
        );
        let msg = Message::parse(&el).unwrap();
        assert_eq!(msg.type_, MessageType::Normal);
        assert_eq!(msg.body.as_deref(), Some("hi"));
        assert_eq!(msg.payloads.len(), 1);
        assert_eq!(msg.payloads[0].attr("xml:lang"), Some("de"));
        // An <error/> in a non-error message is just an unknown child, not a parse failure.
        let el = parse_xml("<message xmlns='jabber:server' type='chat'><error/></message>");
        let msg = Message::parse(&el).unwrap();
        assert_eq!((msg.error, msg.payloads.len()), (None, 1));
    }

    #[test]
    fn parses_error_and_replies() {
        let el = parse_xml(
            "<message xmlns='jabber:server' from='bob@example.org' to='alice@tern.test/phone' id='m1' \
             type='error'><error type='cancel'><item-not-found \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        );
        let msg = Message::parse(&el).unwrap();
        assert_eq!(msg.error.as_ref().map(|e| e.type_), Some(ErrorType::Cancel));
        assert_eq!(msg.error.as_ref().map(|e| &e.condition), Some(&Condition::ItemNotFound));
        let reply = msg.error_reply(StanzaError::new(Condition::BadRequest));
        assert_eq!((reply.from, reply.to, reply.id), (msg.to, msg.from, msg.id));
    }

    #[test]
    fn rejects_invalid() {
        let bad_type = parse_xml("<message xmlns='jabber:server' type='shout'/>");
        assert_eq!(
            Message::parse(&bad_type),
            Err(StanzaParseError::BadValue { what: "message type", value: "shout".into() })
        );
        let bad_from = parse_xml("<message xmlns='jabber:server' from='@example.org'/>");
        assert_eq!(
            Message::parse(&bad_from),
            Err(StanzaParseError::BadJid { attr: "from", error: JidError::EmptyLocal })
        );
        let bad_to = parse_xml("<message xmlns='jabber:server' to='a@b/'/>");
        assert_eq!(
            Message::parse(&bad_to),
            Err(StanzaParseError::BadJid { attr: "to", error: JidError::EmptyResource })
        );
        let two_threads =
            parse_xml("<message xmlns='jabber:server'><thread>a</thread><thread>b</thread></message>");
        assert_eq!(Message::parse(&two_threads), Err(StanzaParseError::Duplicate("thread")));
        let no_error = parse_xml("<message xmlns='jabber:server' type='error'/>");
        assert_eq!(Message::parse(&no_error), Err(StanzaParseError::MissingError));
        let wrong_ns = Element::new("message", "urn:example");
        assert_eq!(
            Message::parse(&wrong_ns),
            Err(StanzaParseError::WrongElement {
                expected: "message",
                name: "message".into(),
                ns: "urn:example".into()
            })
        );
    }
}
