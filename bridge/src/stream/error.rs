//! Stream error conditions of RFC 6120 §4.9.3.

/// A stream-level error condition (RFC 6120 §4.9.3); fatal to the stream.
///
/// [`StreamDecoder`](super::StreamDecoder) produces only the variants marked "decoder"; the
/// rest exist so the connection layers can send them with [`stream_error`](super::stream_error)
/// and recognise them in a peer's `<stream:error/>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum StreamError {
    /// Decoder: XML that is well-formed but not acceptable XMPP, such as text at stream level.
    #[error("bad-format: the XML is well-formed but cannot be processed")]
    BadFormat,
    /// Decoder: an undeclared namespace prefix, or a reserved prefix misused.
    #[error("bad-namespace-prefix: undeclared or misused namespace prefix")]
    BadNamespacePrefix,
    /// A new stream for this domain pair replaces this one.
    #[error("conflict: a new stream replaces this one")]
    Conflict,
    /// The peer has been idle too long.
    #[error("connection-timeout")]
    ConnectionTimeout,
    /// The `to` domain is no longer served here.
    #[error("host-gone")]
    HostGone,
    /// The `to` domain is not served here.
    #[error("host-unknown")]
    HostUnknown,
    /// A stanza is missing a required `to` or `from`, or they are malformed.
    #[error("improper-addressing")]
    ImproperAddressing,
    /// Something went wrong on our side.
    #[error("internal-server-error")]
    InternalServerError,
    /// The `from` address is not authorised for this stream.
    #[error("invalid-from")]
    InvalidFrom,
    /// Decoder: the stream element is not in the streams namespace, or a default namespace is
    /// bound to a reserved URI. (Whether the content namespace is the expected one is for the
    /// caller to judge from [`StreamEvent::Open`](super::StreamEvent::Open).)
    #[error("invalid-namespace: wrong stream or content namespace")]
    InvalidNamespace,
    /// The XML is not valid against the relevant schema.
    #[error("invalid-xml")]
    InvalidXml,
    /// Data arrived before the stream was authenticated.
    #[error("not-authorized")]
    NotAuthorized,
    /// Decoder: XML that breaks the well-formedness rules (including invalid UTF-8).
    #[error("not-well-formed: the XML is not well-formed")]
    NotWellFormed,
    /// Decoder: a [`Limits`](super::Limits) bound was exceeded.
    #[error("policy-violation: a size, depth or attribute limit was exceeded")]
    PolicyViolation,
    /// We could not reach a remote server needed to serve this stream.
    #[error("remote-connection-failed")]
    RemoteConnectionFailed,
    /// The stream must be renegotiated (e.g. credentials changed).
    #[error("reset")]
    Reset,
    /// We lack the resources to serve the stream.
    #[error("resource-constraint")]
    ResourceConstraint,
    /// Decoder: XML that RFC 6120 §11.1 forbids: a DTD, a markup declaration, a processing
    /// instruction, or a reference to an entity other than the five predefined ones.
    #[error("restricted-xml: DTD, entity declaration, processing instruction or undeclared entity")]
    RestrictedXml,
    /// The peer should reconnect to this host (the text content of the condition).
    #[error("see-other-host: {0}")]
    SeeOtherHost(String),
    /// The server is shutting down.
    #[error("system-shutdown")]
    SystemShutdown,
    /// No other condition applies.
    #[error("undefined-condition")]
    UndefinedCondition,
    /// Decoder: an encoding other than UTF-8 was declared or detected.
    #[error("unsupported-encoding: only UTF-8 is allowed")]
    UnsupportedEncoding,
    /// A mandatory-to-negotiate feature is not supported.
    #[error("unsupported-feature")]
    UnsupportedFeature,
    /// A first-level child of the stream is not a known stanza or stream element.
    #[error("unsupported-stanza-type")]
    UnsupportedStanzaType,
    /// The `version` on the stream header is not supported.
    #[error("unsupported-version")]
    UnsupportedVersion,
}

/// Every condition without content, for the name lookup in both directions.
const SIMPLE: [(StreamError, &str); 24] = [
    (StreamError::BadFormat, "bad-format"),
    (StreamError::BadNamespacePrefix, "bad-namespace-prefix"),
    (StreamError::Conflict, "conflict"),
    (StreamError::ConnectionTimeout, "connection-timeout"),
    (StreamError::HostGone, "host-gone"),
    (StreamError::HostUnknown, "host-unknown"),
    (StreamError::ImproperAddressing, "improper-addressing"),
    (StreamError::InternalServerError, "internal-server-error"),
    (StreamError::InvalidFrom, "invalid-from"),
    (StreamError::InvalidNamespace, "invalid-namespace"),
    (StreamError::InvalidXml, "invalid-xml"),
    (StreamError::NotAuthorized, "not-authorized"),
    (StreamError::NotWellFormed, "not-well-formed"),
    (StreamError::PolicyViolation, "policy-violation"),
    (StreamError::RemoteConnectionFailed, "remote-connection-failed"),
    (StreamError::Reset, "reset"),
    (StreamError::ResourceConstraint, "resource-constraint"),
    (StreamError::RestrictedXml, "restricted-xml"),
    (StreamError::SystemShutdown, "system-shutdown"),
    (StreamError::UndefinedCondition, "undefined-condition"),
    (StreamError::UnsupportedEncoding, "unsupported-encoding"),
    (StreamError::UnsupportedFeature, "unsupported-feature"),
    (StreamError::UnsupportedStanzaType, "unsupported-stanza-type"),
    (StreamError::UnsupportedVersion, "unsupported-version"),
];

impl StreamError {
    /// The RFC 6120 §4.9.3 element name of this condition, e.g. `"restricted-xml"`.
    pub fn condition(&self) -> &'static str {
        if let StreamError::SeeOtherHost(_) = self {
            return "see-other-host";
        }
        SIMPLE.iter().find(|(e, _)| e == self).map_or("undefined-condition", |(_, name)| name)
    }

    /// The condition named `name` (the element name inside a peer's `<stream:error/>`), with
    /// `text` as the host for `see-other-host`; `None` for an unknown name.
    pub fn from_condition(name: &str, text: &str) -> Option<StreamError> {
        if name == "see-other-host" {
            return Some(StreamError::SeeOtherHost(text.to_owned()));
        }
        SIMPLE.iter().find(|(_, n)| *n == name).map(|(e, _)| e.clone())
    }
}
