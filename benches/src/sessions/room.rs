//! A group chat room (XEP-0045) from a phone's connection, on either protocol: a phone on tern
//! joins with `Up{room_join}` and posts `Up{chat}` of type GROUPCHAT (tern is the occupant, in a
//! room of a federated MUC service); an XMPP client on Prosody sends the join presence to
//! `room/nick` itself and posts `<message type='groupchat'/>`. What comes back is read as
//! occupants (joins) and messages.

use anyhow::bail;
use prost::Message as _;
use tern_bridge::mapping::muc::{join_presence, History, NS_MUC_USER};
use tern_bridge::stanza::{Message, MessageType, Presence, PresenceType};
use tern_bridge::stream::NS_CLIENT;
use tern_bridge::Jid;
use tern_schemas::v1::{self, down, up, Down, Up};

use super::link::{Incoming, Link};
use super::{send_all, Target};
use crate::chat::{message_id, BODY_LEN};

/// What a room said to one occupant, as far as the bench cares.
#[derive(Debug)]
pub(crate) enum RoomEvent {
    /// An occupant is in the room (its nick), ourselves included.
    Occupant(String),
    /// A message, as (id, body, whether it is a groupchat message).
    Chat(String, String, bool),
    /// Anything else (the subject, a PUBACK, an occupant leaving, our own presence).
    Other,
}

/// The room's bare JID on `t`'s MUC service.
pub(crate) fn room_jid(t: &Target, name: &str) -> anyhow::Result<Jid> {
    let Some(muc) = &t.muc else { bail!("{} has no MUC service here", t.name()) };
    Ok(Jid::parse(&format!("{name}@{muc}"))?)
}

/// Asks to join `room` as `nick` without history; the answer comes as events.
pub(crate) async fn join(link: &mut Link, room: &Jid, nick: &str) -> anyhow::Result<()> {
    match link {
        Link::Mqtt(c) => {
            let join = v1::RoomJoin { room: room.bare_str(), nick: nick.into(), ..Default::default() };
            let up =
                Up { id: format!("join-{nick}"), body: Some(up::Body::RoomJoin(join)), ..Default::default() };
            c.send(&crate::raw_mqtt::publish_packet("u", Some(1), &up.encode_to_vec())).await
        }
        Link::Xmpp(x) => {
            let to = room.with_resource(nick)?;
            let mut p = join_presence(&x.conn.jid, &to, History::MaxStanzas(0), None);
            p.from = None;
            x.conn.send(&p.to_element(NS_CLIENT)).await
        }
    }
}

/// The next thing the server sends, acknowledged where that is needed (PUBACK); an error the
/// room or tern sends back (a refused join or message) fails.
pub(crate) async fn next_event(link: &mut Link, room: &Jid) -> anyhow::Result<RoomEvent> {
    match (link.read().await?, link) {
        (Incoming::Mqtt(p), Link::Mqtt(c)) => {
            let Some(publish) = p.publish() else { return Ok(RoomEvent::Other) };
            if let Some(id) = publish.packet_id {
                c.puback(id).await?;
            }
            let Ok(d) = Down::decode(publish.payload) else { return Ok(RoomEvent::Other) };
            Ok(match d.body {
                Some(down::Body::Occupant(o)) if o.show != v1::presence::Show::Unavailable as i32 => {
                    RoomEvent::Occupant(o.nick)
                }
                Some(down::Body::Chat(c)) => {
                    RoomEvent::Chat(d.id, c.body, c.r#type == v1::MessageType::Groupchat as i32)
                }
                Some(down::Body::Error(e)) => bail!("tern refused {:?}: {:?} {}", d.id, e.code(), e.text),
                _ => RoomEvent::Other,
            })
        }
        (Incoming::Xmpp(el), Link::Xmpp(_)) => {
            let from_room =
                |from: &Option<Jid>| from.as_ref().is_some_and(|f| f.bare_str() == room.bare_str());
            match el.name() {
                "presence" => {
                    let p = Presence::parse(&el).map_err(|e| anyhow::anyhow!("unparsable presence: {e}"))?;
                    if !from_room(&p.from) || p.payload("x", NS_MUC_USER).is_none() {
                        return Ok(RoomEvent::Other);
                    }
                    match p.type_ {
                        PresenceType::Error => bail!("the room refused the join: {el}"),
                        PresenceType::Available => Ok(RoomEvent::Occupant(
                            p.from.and_then(|f| f.resource().map(str::to_owned)).unwrap_or_default(),
                        )),
                        _ => Ok(RoomEvent::Other),
                    }
                }
                "message" => {
                    let m = Message::parse(&el).map_err(|e| anyhow::anyhow!("unparsable message: {e}"))?;
                    if m.type_ == MessageType::Error {
                        bail!("a message came back as an error: {el}");
                    }
                    let groupchat = m.type_ == MessageType::Groupchat && from_room(&m.from);
                    Ok(match m.id.zip(m.body) {
                        Some((id, body)) => RoomEvent::Chat(id, body, groupchat),
                        None => RoomEvent::Other,
                    })
                }
                _ => Ok(RoomEvent::Other),
            }
        }
        _ => bail!("a packet of the other protocol"),
    }
}

/// Posts one groupchat message per `(k, sent_us)` (id `message_id(k)`, the send time in the
/// body) and waits until the server has them: on MQTT at QoS 1 with at most `window`
/// unacknowledged, then every PUBACK; on XMPP flat out, then one iq round trip. Whatever
/// comes in meanwhile (the room's echo to an XMPP sender) is dropped.
pub(crate) async fn post_all(
    link: &mut Link,
    room: &Jid,
    messages: impl IntoIterator<Item = (u64, u64)>,
    window: usize,
) -> anyhow::Result<u64> {
    match link {
        Link::Mqtt(c) => {
            let packets = messages.into_iter().map(|(k, sent_us)| {
                let chat = v1::Chat {
                    peer: room.bare_str(),
                    body: format!("{sent_us:0BODY_LEN$}"),
                    r#type: v1::MessageType::Groupchat as i32,
                    ..Default::default()
                };
                (
                    "u".to_owned(),
                    Up { id: message_id(k), body: Some(up::Body::Chat(chat)), ..Default::default() }
                        .encode_to_vec(),
                )
            });
            send_all(c, packets, window).await
        }
        Link::Xmpp(x) => {
            let (mut sent, mut out) = (0, String::new());
            for (k, sent_us) in messages {
                let mut m = Message::new(MessageType::Groupchat);
                m.to = Some(room.clone());
                m.id = Some(message_id(k));
                m.body = Some(format!("{sent_us:0BODY_LEN$}"));
                out.clear();
                m.to_element(NS_CLIENT).write_in_stream(NS_CLIENT, &mut out);
                x.conn.send_raw(&out).await?;
                sent += 1;
            }
            x.conn.round_trip().await?;
            Ok(sent)
        }
    }
}
