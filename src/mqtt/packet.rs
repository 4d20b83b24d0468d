//! The MQTT packets a session exchanges (MQTT 3.1.1 §3, MQTT 5 §3), independent of the version.
//!
//! The session core reasons about these; the codec maps them to and from the wire for each
//! version, so the core needs no version branches beyond reason codes.

use bytes::Bytes;

/// The protocol level from CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (level 4).
    V4,
    /// MQTT 5 (level 5).
    V5,
}

/// A Last Will (MQTT 3.1.1 §3.1.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic as the client named it.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS 0..=2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
}

/// A CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectReq {
    /// Protocol level.
    pub version: Version,
    /// Client identifier: tern's device id.
    pub client_id: String,
    /// Clean session (v4) / clean start (v5).
    pub clean: bool,
    /// Keepalive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// User name and password.
    pub login: Option<(String, String)>,
    /// Last Will.
    pub will: Option<Will>,
    /// MQTT 5 Receive Maximum: QoS 1 PUBLISHes the client takes unacknowledged.
    pub receive_max: Option<u16>,
    /// MQTT 5 Maximum Packet Size the client accepts.
    pub max_packet: Option<u32>,
}

/// A PUBLISH from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishIn {
    /// Topic as the client named it.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS 0..=2.
    pub qos: u8,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
    /// Retain flag.
    pub retain: bool,
}

/// Packets from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// CONNECT.
    Connect(ConnectReq),
    /// PUBLISH.
    Publish(PublishIn),
    /// PUBACK of a downward QoS 1 PUBLISH.
    PubAck(u16),
    /// PUBREC of a downward QoS 2 PUBLISH (tern never sends QoS 2, so this is a protocol error).
    PubRec(u16),
    /// PUBREL of an upward QoS 2 PUBLISH.
    PubRel(u16),
    /// PUBCOMP (never expected).
    PubComp(u16),
    /// SUBSCRIBE with (filter, requested QoS).
    Subscribe { pkid: u16, filters: Vec<(String, u8)> },
    /// UNSUBSCRIBE.
    Unsubscribe { pkid: u16, filters: Vec<String> },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect,
    /// A packet only a server sends (CONNACK, SUBACK, ...).
    ServerOnly,
}

/// CONNACK outcomes tern uses, mapped per version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnCode {
    /// Accepted.
    Accepted,
    /// Protocol level not served.
    BadProtocol,
    /// Client id is not a valid device id.
    BadClientId,
    /// Too many sessions, or the store is failing.
    ServerUnavailable,
    /// Wrong user name or password.
    BadCredentials,
    /// Not allowed (no login given).
    NotAuthorized,
}

/// Why the server closes a session (MQTT 5 DISCONNECT reason; v4 just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Client asked for it.
    Normal,
    /// The client broke the protocol.
    ProtocolError,
    /// Nothing heard within 1.5 × keepalive.
    KeepAliveTimeout,
    /// Another connection took over this device id.
    SessionTakenOver,
    /// A packet over the size limit.
    PacketTooLarge,
    /// Server going down.
    ServerShuttingDown,
}

/// Packets tern sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// CONNACK.
    ConnAck { session_present: bool, code: ConnCode },
    /// PUBLISH to the client.
    Publish { topic: String, payload: Bytes, qos: u8, pkid: u16, retain: bool },
    /// PUBACK; `refused` maps to reason "not authorized" on v5 (v4 has no reason codes).
    PubAck { pkid: u16, refused: bool },
    /// PUBREC of an upward QoS 2 PUBLISH.
    PubRec(u16),
    /// PUBCOMP answering PUBREL.
    PubComp(u16),
    /// SUBACK: granted QoS per filter, or `None` for refused.
    SubAck { pkid: u16, granted: Vec<Option<u8>> },
    /// UNSUBACK for `n` filters.
    UnsubAck { pkid: u16, n: usize },
    /// PINGRESP.
    PingResp,
    /// DISCONNECT (sent on v5 only).
    Disconnect(CloseReason),
}
