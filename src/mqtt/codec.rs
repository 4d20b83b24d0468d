//! Bytes ⇄ [`Inbound`]/[`Outbound`] for MQTT 3.1.1 and 5, over rumqttc's packet codec.
//!
//! rumqttd's own `protocol` types keep the QoS and packet id of a PUBLISH crate-private, so a
//! server outside that crate cannot build or inspect one; rumqttc's `mqttbytes` (same authors,
//! same wire code) has public fields. The version is sniffed from the first CONNECT.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::{Error as V5Error, QoS as V5QoS};

use super::packet::*;

/// Why the byte stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A packet over the configured limit.
    #[error("packet larger than {0} bytes")]
    TooLarge(usize),
    /// The first packet was not a CONNECT, or a CONNECT came twice.
    #[error("expected CONNECT first")]
    NotConnect,
    /// A protocol level tern does not serve (it answers with a CONNACK first).
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
    /// Anything else malformed.
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// Decoder and encoder state for one connection.
#[derive(Debug, Clone)]
pub struct Codec {
    version: Option<Version>,
    max_packet: usize,
}

impl Codec {
    /// A codec that has not seen CONNECT yet.
    pub fn new(max_packet: usize) -> Codec {
        Codec { version: None, max_packet }
    }

    /// The version fixed by CONNECT, if seen.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Takes one packet off the front of `buf`, or `None` if more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let version = match self.version {
            Some(v) => v,
            None => match sniff_connect(buf)? {
                None => return Ok(None),
                Some(v) => v,
            },
        };
        // rumqttc's decoder is not ours to audit; a panic in it must cost one connection, not
        // the task's invariants, so it is caught and reported as malformed input.
        let decoded = catch_unwind(AssertUnwindSafe(|| match version {
            Version::V4 => decode_v4(buf, self.max_packet),
            Version::V5 => decode_v5(buf, self.max_packet),
        }))
        .unwrap_or_else(|_| Err(CodecError::Malformed("decoder panicked".into())))?;
        match (&decoded, self.version) {
            (Some(Inbound::Connect(_)), None) => self.version = Some(version),
            (Some(Inbound::Connect(_)), Some(_)) => return Err(CodecError::NotConnect),
            (Some(_), None) => return Err(CodecError::NotConnect),
            _ => {}
        }
        Ok(decoded)
    }

    /// Appends the wire form of `packet`. A v4 session gets no DISCONNECT (3.1.1 has none from servers).
    pub fn encode(&self, packet: Outbound, buf: &mut BytesMut) {
        let result = match self.version.unwrap_or(Version::V4) {
            Version::V4 => encode_v4(packet, buf),
            Version::V5 => encode_v5(packet, buf),
        };
        if let Err(e) = result {
            // Only reachable if tern itself built an invalid packet (e.g. an over-long topic).
            tracing::error!(error = %e, "dropping an outbound packet that failed to encode");
        }
    }
}

/// Reads the protocol level of a leading CONNECT without consuming it.
fn sniff_connect(buf: &[u8]) -> Result<Option<Version>, CodecError> {
    if buf[0] >> 4 != 1 {
        return Err(CodecError::NotConnect);
    }
    // Skip the remaining-length varint (1..=4 bytes).
    let mut i = 1;
    loop {
        let Some(b) = buf.get(i) else { return Ok(None) };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(CodecError::Malformed("remaining length".into()));
        }
    }
    // Protocol name (2-byte length + "MQTT"), then the level.
    let Some(name_len) = buf.get(i..i + 2) else { return Ok(None) };
    let name_len = u16::from_be_bytes([name_len[0], name_len[1]]) as usize;
    let Some(level) = buf.get(i + 2 + name_len) else { return Ok(None) };
    match level {
        4 => Ok(Some(Version::V4)),
        5 => Ok(Some(Version::V5)),
        l => Err(CodecError::UnsupportedLevel(*l)),
    }
}

fn malformed(e: impl std::fmt::Debug) -> CodecError {
    CodecError::Malformed(format!("{e:?}"))
}

fn decode_v4(buf: &mut BytesMut, max: usize) -> Result<Option<Inbound>, CodecError> {
    use rumqttc::mqttbytes::Error as E;
    let packet = match v4::Packet::read(buf, max) {
        Ok(p) => p,
        Err(E::InsufficientBytes(_)) => return Ok(None),
        Err(E::PayloadSizeLimitExceeded(_)) => return Err(CodecError::TooLarge(max)),
        Err(e) => return Err(malformed(e)),
    };
    Ok(Some(match packet {
        v4::Packet::Connect(c) => Inbound::Connect(ConnectReq {
            version: Version::V4,
            client_id: c.client_id,
            clean: c.clean_session,
            keep_alive: c.keep_alive,
            login: c.login.map(|l| (l.username, l.password)),
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: w.qos as u8,
                retain: w.retain,
            }),
            receive_max: None,
            max_packet: None,
        }),
        v4::Packet::Publish(p) => Inbound::Publish(PublishIn {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            pkid: p.pkid,
            retain: p.retain,
        }),
        v4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v4::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v4::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        v4::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| (f.path, f.qos as u8)).collect(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe { pkid: u.pkid, filters: u.topics },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect,
        v4::Packet::ConnAck(_) | v4::Packet::SubAck(_) | v4::Packet::UnsubAck(_) | v4::Packet::PingResp => {
            Inbound::ServerOnly
        }
    }))
}

fn decode_v5(buf: &mut BytesMut, max: usize) -> Result<Option<Inbound>, CodecError> {
    use V5Error as E;
    let packet = match v5::Packet::read(buf, Some(max as u32)) {
        Ok(p) => p,
        Err(E::InsufficientBytes(_)) => return Ok(None),
        Err(E::PayloadSizeLimitExceeded { .. }) => return Err(CodecError::TooLarge(max)),
        Err(e) => return Err(malformed(e)),
    };
    Ok(Some(match packet {
        v5::Packet::Connect(c, will, login) => Inbound::Connect(ConnectReq {
            version: Version::V5,
            client_id: c.client_id,
            clean: c.clean_start,
            keep_alive: c.keep_alive,
            receive_max: c.properties.as_ref().and_then(|p| p.receive_maximum),
            max_packet: c.properties.as_ref().and_then(|p| p.max_packet_size),
            login: login.map(|l| (l.username, l.password)),
            will: match will {
                None => None,
                Some(w) => Some(Will {
                    topic: String::from_utf8(w.topic.to_vec()).map_err(malformed)?,
                    payload: w.message,
                    qos: w.qos as u8,
                    retain: w.retain,
                }),
            },
        }),
        v5::Packet::Publish(p) => {
            // tern advertises no topic aliases, so an alias is a protocol error.
            if p.properties.as_ref().and_then(|p| p.topic_alias).is_some() {
                return Err(CodecError::Malformed("topic alias not allowed".into()));
            }
            Inbound::Publish(PublishIn {
                topic: String::from_utf8(p.topic.to_vec()).map_err(malformed)?,
                payload: p.payload,
                qos: p.qos as u8,
                pkid: p.pkid,
                retain: p.retain,
            })
        }
        v5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v5::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v5::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        v5::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| (f.path, f.qos as u8)).collect(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe { pkid: u.pkid, filters: u.filters },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(_) => Inbound::Disconnect,
        v5::Packet::Auth(_) => return Err(CodecError::Malformed("enhanced auth not supported".into())),
        v5::Packet::ConnAck(_)
        | v5::Packet::SubAck(_)
        | v5::Packet::UnsubAck(_)
        | v5::Packet::PingResp(_) => Inbound::ServerOnly,
    }))
}

fn qos_v4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos_v5(q: u8) -> V5QoS {
    match q {
        0 => V5QoS::AtMostOnce,
        1 => V5QoS::AtLeastOnce,
        _ => V5QoS::ExactlyOnce,
    }
}

fn encode_v4(packet: Outbound, buf: &mut BytesMut) -> Result<usize, String> {
    encode_v4_inner(packet, buf).map_err(|e| e.to_string())
}

fn encode_v4_inner(packet: Outbound, buf: &mut BytesMut) -> Result<usize, rumqttc::mqttbytes::Error> {
    use v4::ConnectReturnCode as C;
    match packet {
        Outbound::ConnAck { session_present, code } => {
            let code = match code {
                ConnCode::Accepted => C::Success,
                ConnCode::BadProtocol => C::RefusedProtocolVersion,
                ConnCode::BadClientId => C::BadClientId,
                ConnCode::ServerUnavailable => C::ServiceUnavailable,
                ConnCode::BadCredentials => C::BadUserNamePassword,
                ConnCode::NotAuthorized => C::NotAuthorized,
            };
            v4::ConnAck::new(code, session_present).write(buf)
        }
        Outbound::Publish { topic, payload, qos, pkid, retain } => {
            let mut p = v4::Publish::from_bytes(topic, qos_v4(qos), payload);
            p.pkid = pkid;
            p.retain = retain;
            p.write(buf)
        }
        Outbound::PubAck { pkid, .. } => v4::PubAck::new(pkid).write(buf),
        Outbound::PubRec(pkid) => v4::PubRec::new(pkid).write(buf),
        Outbound::PubComp(pkid) => v4::PubComp::new(pkid).write(buf),
        Outbound::SubAck { pkid, granted } => {
            let codes = granted
                .into_iter()
                .map(|g| match g {
                    Some(q) => v4::SubscribeReasonCode::Success(qos_v4(q)),
                    None => v4::SubscribeReasonCode::Failure,
                })
                .collect();
            v4::SubAck::new(pkid, codes).write(buf)
        }
        Outbound::UnsubAck { pkid, .. } => v4::UnsubAck::new(pkid).write(buf),
        Outbound::PingResp => v4::PingResp.write(buf),
        Outbound::Disconnect(_) => Ok(0),
    }
}

fn encode_v5(packet: Outbound, buf: &mut BytesMut) -> Result<usize, String> {
    encode_v5_inner(packet, buf).map_err(|e| e.to_string())
}

fn encode_v5_inner(packet: Outbound, buf: &mut BytesMut) -> Result<usize, V5Error> {
    use v5::ConnectReturnCode as C;
    match packet {
        Outbound::ConnAck { session_present, code } => {
            let code = match code {
                ConnCode::Accepted => C::Success,
                ConnCode::BadProtocol => C::UnsupportedProtocolVersion,
                ConnCode::BadClientId => C::ClientIdentifierNotValid,
                ConnCode::ServerUnavailable => C::ServerUnavailable,
                ConnCode::BadCredentials => C::BadUserNamePassword,
                ConnCode::NotAuthorized => C::NotAuthorized,
            };
            let properties = (code == C::Success).then(|| v5::ConnAckProperties {
                // What a v5 client may rely on: no aliases, no shared subscriptions, QoS ≤ 1
                // downward, and no retained messages outside plain topics.
                session_expiry_interval: None,
                receive_max: None,
                max_qos: None,
                retain_available: Some(0),
                max_packet_size: None,
                assigned_client_identifier: None,
                topic_alias_max: Some(0),
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            });
            v5::ConnAck { session_present, code, properties }.write(buf)
        }
        Outbound::Publish { topic, payload, qos, pkid, retain } => {
            let mut p = v5::Publish::new(topic, qos_v5(qos), payload, None);
            p.pkid = pkid;
            p.retain = retain;
            p.write(buf)
        }
        Outbound::PubAck { pkid, refused } => {
            let reason = if refused { v5::PubAckReason::NotAuthorized } else { v5::PubAckReason::Success };
            v5::PubAck { pkid, reason, properties: None }.write(buf)
        }
        Outbound::PubRec(pkid) => {
            v5::PubRec { pkid, reason: v5::PubRecReason::Success, properties: None }.write(buf)
        }
        Outbound::PubComp(pkid) => {
            v5::PubComp { pkid, reason: v5::PubCompReason::Success, properties: None }.write(buf)
        }
        Outbound::SubAck { pkid, granted } => {
            let return_codes = granted
                .into_iter()
                .map(|g| match g {
                    Some(q) => v5::SubscribeReasonCode::Success(qos_v5(q)),
                    None => v5::SubscribeReasonCode::NotAuthorized,
                })
                .collect();
            v5::SubAck { pkid, return_codes, properties: None }.write(buf)
        }
        Outbound::UnsubAck { pkid, n } => {
            v5::UnsubAck { pkid, reasons: vec![v5::UnsubAckReason::Success; n], properties: None }.write(buf)
        }
        Outbound::PingResp => v5::PingResp::write(buf),
        Outbound::Disconnect(reason) => {
            use v5::DisconnectReasonCode as D;
            let reason_code = match reason {
                CloseReason::Normal => D::NormalDisconnection,
                CloseReason::ProtocolError => D::ProtocolError,
                CloseReason::KeepAliveTimeout => D::KeepAliveTimeout,
                CloseReason::SessionTakenOver => D::SessionTakenOver,
                CloseReason::PacketTooLarge => D::PacketTooLarge,
                CloseReason::ServerShuttingDown => D::ServerShuttingDown,
            };
            v5::Disconnect { reason_code, properties: None }.write(buf)
        }
    }
}

#[cfg(test)]
mod tests;
