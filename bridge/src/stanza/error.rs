//! Stanza errors (RFC 6120 §8.3): the `<error/>` child, its types and defined conditions.

use super::{jid_attr, set_opt, text_el, StanzaParseError};
use crate::jid::Jid;
use crate::stream::Element;

/// The namespace of stanza error conditions and `<text/>` (RFC 6120 §8.3.3).
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// What the sender may do about an error (RFC 6120 §8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry: the error cannot be remedied.
    Cancel,
    /// Proceed: the condition was only a warning.
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting: the error is temporary.
    Wait,
}

impl ErrorType {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }

    /// Parses the attribute value.
    pub fn parse(s: &str) -> Option<ErrorType> {
        Some(match s {
            "auth" => ErrorType::Auth,
            "cancel" => ErrorType::Cancel,
            "continue" => ErrorType::Continue,
            "modify" => ErrorType::Modify,
            "wait" => ErrorType::Wait,
            _ => return None,
        })
    }
}

/// The defined conditions of RFC 6120 §8.3.3.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Condition {
    /// `bad-request`
    BadRequest,
    /// `conflict`
    Conflict,
    /// `feature-not-implemented`
    FeatureNotImplemented,
    /// `forbidden`
    Forbidden,
    /// `gone`, with the entity's new address if known.
    Gone(Option<String>),
    /// `internal-server-error`
    InternalServerError,
    /// `item-not-found`
    ItemNotFound,
    /// `jid-malformed`
    JidMalformed,
    /// `not-acceptable`
    NotAcceptable,
    /// `not-allowed`
    NotAllowed,
    /// `not-authorized`
    NotAuthorized,
    /// `policy-violation`
    PolicyViolation,
    /// `recipient-unavailable`
    RecipientUnavailable,
    /// `redirect`, with the alternate address if given.
    Redirect(Option<String>),
    /// `registration-required`
    RegistrationRequired,
    /// `remote-server-not-found`
    RemoteServerNotFound,
    /// `remote-server-timeout`
    RemoteServerTimeout,
    /// `resource-constraint`
    ResourceConstraint,
    /// `service-unavailable`
    ServiceUnavailable,
    /// `subscription-required`
    SubscriptionRequired,
    /// `undefined-condition`
    UndefinedCondition,
    /// `unexpected-request`
    UnexpectedRequest,
}

impl Condition {
    /// The element name of the condition.
    pub fn name(&self) -> &'static str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::Conflict => "conflict",
            Condition::FeatureNotImplemented => "feature-not-implemented",
            Condition::Forbidden => "forbidden",
            Condition::Gone(_) => "gone",
            Condition::InternalServerError => "internal-server-error",
            Condition::ItemNotFound => "item-not-found",
            Condition::JidMalformed => "jid-malformed",
            Condition::NotAcceptable => "not-acceptable",
            Condition::NotAllowed => "not-allowed",
            Condition::NotAuthorized => "not-authorized",
            Condition::PolicyViolation => "policy-violation",
            Condition::RecipientUnavailable => "recipient-unavailable",
            Condition::Redirect(_) => "redirect",
            Condition::RegistrationRequired => "registration-required",
            Condition::RemoteServerNotFound => "remote-server-not-found",
            Condition::RemoteServerTimeout => "remote-server-timeout",
            Condition::ResourceConstraint => "resource-constraint",
            Condition::ServiceUnavailable => "service-unavailable",
            Condition::SubscriptionRequired => "subscription-required",
            Condition::UndefinedCondition => "undefined-condition",
            Condition::UnexpectedRequest => "unexpected-request",
        }
    }

    /// The condition of element `<name/>` (in [`NS_STANZAS`]); `text` is its content, which
    /// only `gone` and `redirect` carry.
    pub fn from_name(name: &str, text: &str) -> Option<Condition> {
        let uri = || Some(text.to_owned()).filter(|t| !t.is_empty());
        Some(match name {
            "bad-request" => Condition::BadRequest,
            "conflict" => Condition::Conflict,
            "feature-not-implemented" => Condition::FeatureNotImplemented,
            "forbidden" => Condition::Forbidden,
            "gone" => Condition::Gone(uri()),
            "internal-server-error" => Condition::InternalServerError,
            "item-not-found" => Condition::ItemNotFound,
            "jid-malformed" => Condition::JidMalformed,
            "not-acceptable" => Condition::NotAcceptable,
            "not-allowed" => Condition::NotAllowed,
            "not-authorized" => Condition::NotAuthorized,
            "policy-violation" => Condition::PolicyViolation,
            "recipient-unavailable" => Condition::RecipientUnavailable,
            "redirect" => Condition::Redirect(uri()),
            "registration-required" => Condition::RegistrationRequired,
            "remote-server-not-found" => Condition::RemoteServerNotFound,
            "remote-server-timeout" => Condition::RemoteServerTimeout,
            "resource-constraint" => Condition::ResourceConstraint,
            "service-unavailable" => Condition::ServiceUnavailable,
            "subscription-required" => Condition::SubscriptionRequired,
            "undefined-condition" => Condition::UndefinedCondition,
            "unexpected-request" => Condition::UnexpectedRequest,
            _ => return None,
        })
    }

    /// The error type RFC 6120 §8.3.3 gives with this condition in its examples.
    pub fn default_type(&self) -> ErrorType {
        match self {
            Condition::BadRequest
            | Condition::JidMalformed
            | Condition::NotAcceptable
            | Condition::PolicyViolation
            | Condition::Redirect(_) => ErrorType::Modify,
            Condition::Forbidden
            | Condition::NotAuthorized
            | Condition::RegistrationRequired
            | Condition::SubscriptionRequired => ErrorType::Auth,
            Condition::RecipientUnavailable
            | Condition::RemoteServerTimeout
            | Condition::ResourceConstraint
            | Condition::UnexpectedRequest => ErrorType::Wait,
            _ => ErrorType::Cancel,
        }
    }
}

/// An `<error/>` child of a stanza of type `error` (RFC 6120 §8.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaError {
    /// What the sender may do about it.
    pub type_: ErrorType,
    /// The defined condition.
    pub condition: Condition,
    /// Human-readable description, without language tag.
    pub text: Option<String>,
    /// The entity that generated the error, when not the stanza's `from`.
    pub by: Option<Jid>,
}

impl StanzaError {
    /// An error with `condition` and the type usual for it.
    pub fn new(condition: Condition) -> StanzaError {
        StanzaError { type_: condition.default_type(), condition, text: None, by: None }
    }

    /// Builder: adds a human-readable text.
    pub fn with_text(mut self, text: impl Into<String>) -> StanzaError {
        self.text = Some(text.into());
        self
    }

    /// `condition: text`, or just the condition: what a phone is told about the error.
    pub fn summary(&self) -> String {
        match &self.text {
            Some(t) => format!("{}: {t}", self.condition.name()),
            None => self.condition.name().to_owned(),
        }
    }

    /// Parses an `<error/>` element in any namespace (it takes its parent stanza's). Unknown
    /// children (application-specific conditions) are ignored.
    pub fn parse(el: &Element) -> Result<StanzaError, StanzaParseError> {
        if el.name() != "error" {
            return Err(super::wrong(el, "error"));
        }
        let type_ = el.attr("type").ok_or(StanzaParseError::MissingAttr("type"))?;
        let type_ = ErrorType::parse(type_)
            .ok_or_else(|| StanzaParseError::BadValue { what: "error type", value: type_.to_owned() })?;
        let mut condition = None;
        let mut text = None;
        for child in el.elements().filter(|c| c.ns() == NS_STANZAS) {
            if child.name() == "text" {
                // Several texts may differ only in xml:lang; the first is kept.
                text.get_or_insert_with(|| child.text());
            } else if condition.is_none() {
                condition = Condition::from_name(child.name(), &child.text());
            }
        }
        let condition = condition.ok_or(StanzaParseError::MissingCondition)?;
        Ok(StanzaError { type_, condition, text, by: jid_attr(el, "by")? })
    }

    /// The `<error/>` element in stanza namespace `ns`.
    pub fn to_element(&self, ns: &str) -> Element {
        let mut el = Element::new("error", ns).with_attr("type", self.type_.as_str());
        set_opt(&mut el, "by", self.by.as_ref().map(|j| j.to_string()).as_deref());
        let mut cond = Element::new(self.condition.name(), NS_STANZAS);
        if let Condition::Gone(Some(uri)) | Condition::Redirect(Some(uri)) = &self.condition {
            cond.push_text(uri.as_str());
        }
        el.push_child(cond);
        if let Some(text) = &self.text {
            el.push_child(text_el("text", NS_STANZAS, text));
        }
        el
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::error_reply;
    use crate::stream::NS_SERVER;

    fn el(xml: &str) -> Element {
        crate::stanza::tests::parse_xml(xml)
    }

    #[test]
    fn parses_prosody_error() {
        let e = el("<error xmlns='jabber:server' type='cancel' by='example.org'>\
            <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
            <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>No such user</text>\
            <x xmlns='urn:example:app'/></error>");
        let err = StanzaError::parse(&e).unwrap();
        assert_eq!(
            err,
            StanzaError {
                type_: ErrorType::Cancel,
                condition: Condition::ServiceUnavailable,
                text: Some("No such user".into()),
                by: Some(Jid::parse("example.org").unwrap()),
            }
        );
    }

    #[test]
    fn round_trips_every_condition() {
        let names = [
            "bad-request",
            "conflict",
            "feature-not-implemented",
            "forbidden",
            "gone",
            "internal-server-error",
            "item-not-found",
            "jid-malformed",
            "not-acceptable",
            "not-allowed",
            "not-authorized",
            "policy-violation",
            "recipient-unavailable",
            "redirect",
            "registration-required",
            "remote-server-not-found",
            "remote-server-timeout",
            "resource-constraint",
            "service-unavailable",
            "subscription-required",
            "undefined-condition",
            "unexpected-request",
        ];
        for name in names {
            let cond = Condition::from_name(name, "xmpp:new@example.org").unwrap();
            assert_eq!(cond.name(), name);
            let err = StanzaError::new(cond).with_text("why");
            assert_eq!(StanzaError::parse(&err.to_element(NS_SERVER)), Ok(err));
        }
    }

    #[test]
    fn summarises_for_phones() {
        assert_eq!(StanzaError::new(Condition::Conflict).summary(), "conflict");
        assert_eq!(StanzaError::new(Condition::Forbidden).with_text("banned").summary(), "forbidden: banned");
    }

    #[test]
    fn writes_golden() {
        let err = StanzaError::new(Condition::Redirect(Some("xmpp:a@b".into()))).with_text("moved");
        assert_eq!(
            err.to_element(NS_SERVER).to_string(),
            "<error xmlns='jabber:server' type='modify'>\
             <redirect xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>xmpp:a@b</redirect>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>moved</text></error>"
        );
    }

    #[test]
    fn rejects_bad_errors() {
        let no_type = el(
            "<error xmlns='jabber:server'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
        );
        assert_eq!(StanzaError::parse(&no_type), Err(StanzaParseError::MissingAttr("type")));
        let bad_type = el("<error xmlns='jabber:server' type='fatal'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>");
        assert_eq!(
            StanzaError::parse(&bad_type),
            Err(StanzaParseError::BadValue { what: "error type", value: "fatal".into() })
        );
        let no_cond = el("<error xmlns='jabber:server' type='cancel'><oops xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>");
        assert_eq!(StanzaError::parse(&no_cond), Err(StanzaParseError::MissingCondition));
    }

    #[test]
    fn error_reply_swaps_and_never_answers_errors() {
        let iq = el(
            "<iq xmlns='jabber:server' from='a@x/r' to='b@y' id='q1' type='get'><query xmlns='urn:x'/></iq>",
        );
        let reply = error_reply(&iq, &StanzaError::new(Condition::ServiceUnavailable)).unwrap();
        assert_eq!(
            reply.to_string(),
            "<iq xmlns='jabber:server' from='b@y' to='a@x/r' id='q1' type='error'><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
        assert_eq!(error_reply(&reply, &StanzaError::new(Condition::ServiceUnavailable)), None);
    }
}
