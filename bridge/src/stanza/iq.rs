//! Info/query stanzas (RFC 6120 §8.2.3).

use super::{expect, jid_attr, set_common, StanzaError, StanzaParseError};
use crate::jid::Jid;
use crate::stream::Element;

/// The iq type (RFC 6120 §8.2.3); required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqType {
    /// Asks for information.
    Get,
    /// Provides data or asks for a change.
    Set,
    /// A successful answer.
    Result,
    /// A failed answer.
    Error,
}

impl IqType {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            IqType::Get => "get",
            IqType::Set => "set",
            IqType::Result => "result",
            IqType::Error => "error",
        }
    }

    /// Parses the attribute value.
    pub fn parse(s: &str) -> Option<IqType> {
        Some(match s {
            "get" => IqType::Get,
            "set" => IqType::Set,
            "result" => IqType::Result,
            "error" => IqType::Error,
            _ => return None,
        })
    }
}

/// An `<iq/>` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iq {
    /// The sender.
    pub from: Option<Jid>,
    /// The recipient.
    pub to: Option<Jid>,
    /// The stanza id, which the answer echoes.
    pub id: String,
    /// The iq type.
    pub type_: IqType,
    /// The one child of a get or set, the optional child of a result, or the optional copy of
    /// the request's child in an error.
    pub payload: Option<Element>,
    /// The error, for an iq of type `error`.
    pub error: Option<StanzaError>,
}

impl Iq {
    /// A get or set request carrying `payload`.
    pub fn request(type_: IqType, id: impl Into<String>, payload: Element) -> Iq {
        Iq { from: None, to: None, id: id.into(), type_, payload: Some(payload), error: None }
    }

    /// The result answering this iq: addresses swapped, same id.
    pub fn result_reply(&self, payload: Option<Element>) -> Iq {
        Iq {
            from: self.to.clone(),
            to: self.from.clone(),
            id: self.id.clone(),
            type_: IqType::Result,
            payload,
            error: None,
        }
    }

    /// The error answering this iq: addresses swapped, same id, without the request payload.
    pub fn error_reply(&self, error: StanzaError) -> Iq {
        Iq { type_: IqType::Error, error: Some(error), ..self.result_reply(None) }
    }

    /// Parses an `<iq/>` in any stanza namespace, checking the child count its type requires.
    pub fn parse(el: &Element) -> Result<Iq, StanzaParseError> {
        expect(el, "iq")?;
        let id = el.attr("id").ok_or(StanzaParseError::MissingAttr("id"))?.to_owned();
        let type_ = el.attr("type").ok_or(StanzaParseError::MissingAttr("type"))?;
        let type_ = IqType::parse(type_)
            .ok_or_else(|| StanzaParseError::BadValue { what: "iq type", value: type_.to_owned() })?;
        let (from, to) = (jid_attr(el, "from")?, jid_attr(el, "to")?);
        let mut error = None;
        let mut payloads = Vec::new();
        for child in el.elements() {
            if type_ == IqType::Error && error.is_none() && child.is("error", el.ns()) {
                error = Some(StanzaError::parse(child)?);
            } else {
                payloads.push(child);
            }
        }
        let count_err =
            |t: IqType| StanzaParseError::IqPayloadCount { type_: t.as_str(), found: payloads.len() };
        match type_ {
            IqType::Get | IqType::Set if payloads.len() != 1 => return Err(count_err(type_)),
            // An error may echo the request's payload, so one is allowed there too.
            IqType::Result | IqType::Error if payloads.len() > 1 => return Err(count_err(type_)),
            IqType::Error if error.is_none() => return Err(StanzaParseError::MissingError),
            _ => {}
        }
        let payload = payloads.first().map(|p| (*p).clone());
        Ok(Iq { from, to, id, type_, payload, error })
    }

    /// The iq as an element in stanza namespace `ns`.
    pub fn to_element(&self, ns: &str) -> Element {
        let mut el = Element::new("iq", ns);
        set_common(&mut el, &self.from, &self.to, Some(&self.id));
        el.set_attr("type", self.type_.as_str());
        if let Some(p) = &self.payload {
            el.push_child(p.clone());
        }
        if let Some(error) = &self.error {
            el.push_child(error.to_element(ns));
        }
        el
    }
}

impl TryFrom<&Element> for Iq {
    type Error = StanzaParseError;
    fn try_from(el: &Element) -> Result<Self, Self::Error> {
        Iq::parse(el)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jid::JidError;
    use crate::stanza::tests::parse_xml;
    use crate::stanza::{Condition, Stanza};
    use crate::stream::{NS_COMPONENT, NS_SERVER};

    #[test]
    fn parses_prosody_ping() {
        let el = parse_xml(
            "<iq xmlns='jabber:server' from='montague.example' to='tern.test' id='s2s-ping-1' type='get'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        );
        let iq = Iq::parse(&el).unwrap();
        assert_eq!(iq.from, Some(Jid::parse("montague.example").unwrap()));
        assert_eq!(iq.id, "s2s-ping-1");
        assert_eq!(iq.type_, IqType::Get);
        assert_eq!(iq.payload, Some(Element::new("ping", "urn:xmpp:ping")));
        assert_eq!(Stanza::parse(&el), Ok(Stanza::Iq(iq)));
    }

    #[test]
    fn round_trips_and_replies() {
        let mut iq = Iq::request(IqType::Get, "v1", Element::new("query", "jabber:iq:version"));
        iq.from = Some(Jid::parse("romeo@montague.example/orchard").unwrap());
        iq.to = Some(Jid::parse("tern.test").unwrap());
        let el = iq.to_element(NS_SERVER);
        assert_eq!(
            el.to_string(),
            "<iq xmlns='jabber:server' from='romeo@montague.example/orchard' to='tern.test' id='v1' \
             type='get'><query xmlns='jabber:iq:version'/></iq>"
        );
        assert_eq!(Iq::parse(&el), Ok(iq.clone()));
        assert_eq!(Iq::parse(&iq.to_element(NS_COMPONENT)), Ok(iq.clone()));

        let result = iq.result_reply(None);
        assert_eq!(
            result.to_element(NS_SERVER).to_string(),
            "<iq xmlns='jabber:server' from='tern.test' to='romeo@montague.example/orchard' id='v1' \
             type='result'/>"
        );
        let error = iq.error_reply(StanzaError::new(Condition::ServiceUnavailable));
        assert_eq!(
            error.to_element(NS_SERVER).to_string(),
            "<iq xmlns='jabber:server' from='tern.test' to='romeo@montague.example/orchard' id='v1' \
             type='error'><error type='cancel'><service-unavailable \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
        assert_eq!(Iq::parse(&error.to_element(NS_SERVER)), Ok(error));
    }

    #[test]
    fn error_may_echo_the_request() {
        let el = parse_xml(
            "<iq xmlns='jabber:server' id='x' type='error'><query xmlns='jabber:iq:roster'/>\
             <error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        );
        let iq = Iq::parse(&el).unwrap();
        assert_eq!(iq.payload.as_ref().map(|p| p.name()), Some("query"));
        assert_eq!(iq.error.map(|e| e.condition), Some(Condition::Forbidden));
    }

    #[test]
    fn rejects_invalid() {
        let ping = "<ping xmlns='urn:xmpp:ping'/>";
        let cases = [
            (
                format!("<iq xmlns='jabber:server' type='get'>{ping}</iq>"),
                StanzaParseError::MissingAttr("id"),
            ),
            (format!("<iq xmlns='jabber:server' id='1'>{ping}</iq>"), StanzaParseError::MissingAttr("type")),
            (
                format!("<iq xmlns='jabber:server' id='1' type='query'>{ping}</iq>"),
                StanzaParseError::BadValue { what: "iq type", value: "query".into() },
            ),
            (
                "<iq xmlns='jabber:server' id='1' type='get'/>".to_owned(),
                StanzaParseError::IqPayloadCount { type_: "get", found: 0 },
            ),
            (
                format!("<iq xmlns='jabber:server' id='1' type='set'>{ping}{ping}</iq>"),
                StanzaParseError::IqPayloadCount { type_: "set", found: 2 },
            ),
            (
                format!("<iq xmlns='jabber:server' id='1' type='result'>{ping}{ping}</iq>"),
                StanzaParseError::IqPayloadCount { type_: "result", found: 2 },
            ),
            ("<iq xmlns='jabber:server' id='1' type='error'/>".to_owned(), StanzaParseError::MissingError),
            (
                format!("<iq xmlns='jabber:server' id='1' type='get' from='a@b/'>{ping}</iq>"),
                StanzaParseError::BadJid { attr: "from", error: JidError::EmptyResource },
            ),
            (
                format!("<iq xmlns='jabber:server' id='1' type='get' to=''>{ping}</iq>"),
                StanzaParseError::BadJid { attr: "to", error: JidError::EmptyDomain },
            ),
        ];
        for (xml, err) in cases {
            assert_eq!(Iq::parse(&parse_xml(&xml)), Err(err), "{xml}");
        }
    }
}
