//! Presence stanzas (RFC 6120 §8.2.2, RFC 6121 §3 and §4).

use super::{expect, jid_attr, once, set_common, text_el, StanzaError, StanzaParseError};
use crate::jid::Jid;
use crate::stream::Element;

/// The presence type (RFC 6121 §4.7.1); `available` is the absence of the attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PresenceType {
    /// The sender is online (no `type` attribute).
    #[default]
    Available,
    /// The sender went offline.
    Unavailable,
    /// A subscription request.
    Subscribe,
    /// A subscription request was approved.
    Subscribed,
    /// The sender unsubscribes from the recipient's presence.
    Unsubscribe,
    /// A subscription was denied or cancelled.
    Unsubscribed,
    /// A server asks for current presence.
    Probe,
    /// An error about a presence sent earlier.
    Error,
}

impl PresenceType {
    /// The attribute value (`None` for available).
    pub fn as_str(self) -> Option<&'static str> {
        Some(match self {
            PresenceType::Available => return None,
            PresenceType::Unavailable => "unavailable",
            PresenceType::Subscribe => "subscribe",
            PresenceType::Subscribed => "subscribed",
            PresenceType::Unsubscribe => "unsubscribe",
            PresenceType::Unsubscribed => "unsubscribed",
            PresenceType::Probe => "probe",
            PresenceType::Error => "error",
        })
    }

    /// Parses the attribute value; `available` is not a valid value (RFC 6121 §4.7.1).
    pub fn parse(s: &str) -> Option<PresenceType> {
        Some(match s {
            "unavailable" => PresenceType::Unavailable,
            "subscribe" => PresenceType::Subscribe,
            "subscribed" => PresenceType::Subscribed,
            "unsubscribe" => PresenceType::Unsubscribe,
            "unsubscribed" => PresenceType::Unsubscribed,
            "probe" => PresenceType::Probe,
            "error" => PresenceType::Error,
            _ => return None,
        })
    }
}

/// The availability sub-state of an available presence (RFC 6121 §4.7.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Show {
    /// Temporarily away.
    Away,
    /// Free to chat.
    Chat,
    /// Do not disturb.
    Dnd,
    /// Away for an extended period.
    Xa,
}

impl Show {
    /// The element text.
    pub fn as_str(self) -> &'static str {
        match self {
            Show::Away => "away",
            Show::Chat => "chat",
            Show::Dnd => "dnd",
            Show::Xa => "xa",
        }
    }

    /// Parses the element text.
    pub fn parse(s: &str) -> Option<Show> {
        Some(match s {
            "away" => Show::Away,
            "chat" => Show::Chat,
            "dnd" => Show::Dnd,
            "xa" => Show::Xa,
            _ => return None,
        })
    }
}

/// A `<presence/>` stanza.
///
/// Only the first `<status/>` is modelled; further ones (other `xml:lang`s) stay in `payloads`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Presence {
    /// The sender.
    pub from: Option<Jid>,
    /// The recipient (`None` for a broadcast).
    pub to: Option<Jid>,
    /// The stanza id.
    pub id: Option<String>,
    /// The presence type.
    pub type_: PresenceType,
    /// The availability sub-state.
    pub show: Option<Show>,
    /// The text of the first `<status/>`.
    pub status: Option<String>,
    /// The resource priority, -128..=127, 0 when absent (RFC 6121 §4.7.2.3).
    pub priority: i8,
    /// The error, for a presence of type `error`.
    pub error: Option<StanzaError>,
    /// Every other child element, in order (caps, vCard avatars, MUC, ...).
    pub payloads: Vec<Element>,
}

impl Presence {
    /// An empty presence of type `type_`.
    pub fn new(type_: PresenceType) -> Presence {
        Presence { type_, ..Presence::default() }
    }

    /// The first payload `name` in namespace `ns`.
    pub fn payload(&self, name: &str, ns: &str) -> Option<&Element> {
        self.payloads.iter().find(|p| p.is(name, ns))
    }

    /// Parses a `<presence/>` in any stanza namespace.
    pub fn parse(el: &Element) -> Result<Presence, StanzaParseError> {
        expect(el, "presence")?;
        let type_ = match el.attr("type") {
            None => PresenceType::Available,
            Some(t) => PresenceType::parse(t)
                .ok_or_else(|| StanzaParseError::BadValue { what: "presence type", value: t.to_owned() })?,
        };
        let mut pres = Presence {
            from: jid_attr(el, "from")?,
            to: jid_attr(el, "to")?,
            id: el.attr("id").map(str::to_owned),
            type_,
            ..Presence::default()
        };
        let (mut show, mut priority) = (None, None);
        let ns = el.ns();
        for child in el.elements() {
            if child.ns() != ns {
                pres.payloads.push(child.clone());
                continue;
            }
            match child.name() {
                "show" => once(&mut show, child, "show")?,
                "priority" => once(&mut priority, child, "priority")?,
                "status" if pres.status.is_none() => pres.status = Some(child.text()),
                // Only an error stanza's `<error/>` means anything (RFC 6120 §8.3.1).
                "error" if type_ == PresenceType::Error && pres.error.is_none() => {
                    pres.error = Some(StanzaError::parse(child)?)
                }
                _ => pres.payloads.push(child.clone()),
            }
        }
        if let Some(s) = show {
            pres.show = Some(Show::parse(&s).ok_or(StanzaParseError::BadValue { what: "show", value: s })?);
        }
        if let Some(p) = priority {
            // XML Schema's `byte` allows surrounding whitespace.
            pres.priority =
                p.trim().parse().map_err(|_| StanzaParseError::BadValue { what: "priority", value: p })?;
        }
        if type_ == PresenceType::Error && pres.error.is_none() {
            return Err(StanzaParseError::MissingError);
        }
        Ok(pres)
    }

    /// The presence as an element in stanza namespace `ns`.
    pub fn to_element(&self, ns: &str) -> Element {
        let mut el = Element::new("presence", ns);
        set_common(&mut el, &self.from, &self.to, self.id.as_deref());
        if let Some(t) = self.type_.as_str() {
            el.set_attr("type", t);
        }
        if let Some(show) = self.show {
            el.push_child(text_el("show", ns, show.as_str()));
        }
        if let Some(status) = &self.status {
            el.push_child(text_el("status", ns, status));
        }
        // 0 is the default, so it is left implicit.
        if self.priority != 0 {
            el.push_child(text_el("priority", ns, &self.priority.to_string()));
        }
        for p in &self.payloads {
            el.push_child(p.clone());
        }
        if let Some(error) = &self.error {
            el.push_child(error.to_element(ns));
        }
        el
    }

    /// The error reply to this presence: addresses swapped, same id, type `error`.
    pub fn error_reply(&self, error: StanzaError) -> Presence {
        Presence {
            from: self.to.clone(),
            to: self.from.clone(),
            id: self.id.clone(),
            type_: PresenceType::Error,
            error: Some(error),
            ..Presence::default()
        }
    }
}

impl TryFrom<&Element> for Presence {
    type Error = StanzaParseError;
    fn try_from(el: &Element) -> Result<Self, Self::Error> {
        Presence::parse(el)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jid::JidError;
    use crate::stanza::tests::parse_xml;
    use crate::stanza::Condition;
    use crate::stream::NS_SERVER;

    fn jid(s: &str) -> Option<Jid> {
        Some(Jid::parse(s).unwrap())
    }

    #[test]
    fn parses_prosody_presence() {
        let el = parse_xml(
            "<presence xmlns='jabber:server' from='romeo@montague.example/orchard' to='juliet@tern.test'>\
             <show>dnd</show><status>In a meeting</status><priority> -5 </priority>\
             <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://conversations.im' \
             ver='np49wMTXDBDyNHbsGVmYcmJ7t3E='/>\
             <x xmlns='vcard-temp:x:update'><photo/></x></presence>",
        );
        let p = Presence::parse(&el).unwrap();
        assert_eq!(p.from, jid("romeo@montague.example/orchard"));
        assert_eq!(p.type_, PresenceType::Available);
        assert_eq!(p.show, Some(Show::Dnd));
        assert_eq!(p.status.as_deref(), Some("In a meeting"));
        assert_eq!(p.priority, -5);
        assert_eq!(p.payloads.len(), 2);
        assert!(p.payload("c", "http://jabber.org/protocol/caps").is_some());
    }

    #[test]
    fn round_trips() {
        let p = Presence {
            from: jid("alice@tern.test/phone"),
            to: None,
            id: Some("p1".into()),
            type_: PresenceType::Available,
            show: Some(Show::Away),
            status: Some("out".into()),
            priority: 127,
            error: None,
            payloads: vec![],
        };
        let el = p.to_element(NS_SERVER);
        assert_eq!(
            el.to_string(),
            "<presence xmlns='jabber:server' from='alice@tern.test/phone' id='p1'><show>away</show>\
             <status>out</status><priority>127</priority></presence>"
        );
        assert_eq!(Presence::parse(&el), Ok(p));
        let sub = Presence { to: jid("bob@example.org"), ..Presence::new(PresenceType::Subscribe) };
        assert_eq!(
            sub.to_element(NS_SERVER).to_string(),
            "<presence xmlns='jabber:server' to='bob@example.org' type='subscribe'/>"
        );
        assert_eq!(Presence::parse(&sub.to_element(NS_SERVER)), Ok(sub));
    }

    #[test]
    fn every_type_round_trips() {
        use PresenceType::*;
        for t in [Available, Unavailable, Subscribe, Subscribed, Unsubscribe, Unsubscribed, Probe] {
            let p = Presence::new(t);
            assert_eq!(Presence::parse(&p.to_element(NS_SERVER)), Ok(p));
        }
        let e = Presence::new(Available).error_reply(StanzaError::new(Condition::RemoteServerNotFound));
        assert_eq!(Presence::parse(&e.to_element(NS_SERVER)), Ok(e));
    }

    #[test]
    fn rejects_invalid() {
        let cases = [
            (
                "<presence xmlns='jabber:server' type='available'/>",
                StanzaParseError::BadValue { what: "presence type", value: "available".into() },
            ),
            (
                "<presence xmlns='jabber:server'><show>busy</show></presence>",
                StanzaParseError::BadValue { what: "show", value: "busy".into() },
            ),
            (
                "<presence xmlns='jabber:server'><priority>128</priority></presence>",
                StanzaParseError::BadValue { what: "priority", value: "128".into() },
            ),
            (
                "<presence xmlns='jabber:server'><priority>-129</priority></presence>",
                StanzaParseError::BadValue { what: "priority", value: "-129".into() },
            ),
            (
                "<presence xmlns='jabber:server'><priority>1</priority><priority>2</priority></presence>",
                StanzaParseError::Duplicate("priority"),
            ),
            (
                "<presence xmlns='jabber:server' to='a@b@c'/>",
                StanzaParseError::BadJid { attr: "to", error: JidError::DomainForbiddenChar('@') },
            ),
            ("<presence xmlns='jabber:server' type='error'/>", StanzaParseError::MissingError),
        ];
        for (xml, err) in cases {
            assert_eq!(Presence::parse(&parse_xml(xml)), Err(err), "{xml}");
        }
    }
}
