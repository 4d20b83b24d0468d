//! The bench's XMPP client tasks: a recipient that answers each message with a delivery receipt,
//! as a legacy client does (XEP-0184 §5.1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_bridge::mapping::NS_RECEIPTS;
use tern_bridge::stanza::{Message, MessageType};
use tern_bridge::stream::NS_CLIENT;
use tern_bridge::{Element, Jid, StreamEvent};
use tokio::sync::{mpsc, watch};

use super::conn::Conn;
use crate::chat::drivers::{Ctx, Note, RecipientStats};

/// Time a client may take to connect, authenticate and bind.
const LOGIN_LIMIT: Duration = Duration::from_secs(30);

/// Where and as whom an XMPP client logs in.
#[derive(Clone, Debug)]
pub struct Account {
    /// The server's c2s address (or a counting proxy in front of it).
    pub addr: SocketAddr,
    /// The bare JID.
    pub jid: Jid,
    /// The password.
    pub password: String,
    /// The resource to bind.
    pub resource: String,
}

/// The receipt a legacy client sends for `msg` (XEP-0184 §5.1): to the sender's full JID, with
/// an id of its own (the message's, marked) and the message's id in `<received/>`.
fn receipt_for(msg: &Message, id: &str) -> Element {
    let mut r = Message::new(MessageType::Chat);
    r.to = msg.from.clone();
    r.id = Some(format!("r{id}"));
    r.payloads.push(Element::new("received", NS_RECEIPTS).with_attr("id", id));
    r.to_element(NS_CLIENT)
}

/// Logs in, reports `Ready`, then receives this pair's chat messages until `stop`: each one is
/// counted like an MQTT recipient's (id, send time in the body) and, in phases with receipts,
/// answered with a receipt if it asks for one.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn recipient_driver(
    ctx: Arc<Ctx>,
    account: Account,
    expect: u64,
    expected_peer: String,
    notes: mpsc::UnboundedSender<Note>,
    mut stop: watch::Receiver<bool>,
) -> RecipientStats {
    let mut st = RecipientStats::new(expect);
    let mut conn = match Conn::login(
        account.addr,
        &account.jid,
        &account.password,
        &account.resource,
        LOGIN_LIMIT,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = notes.send(Note::SetupFailed(format!("{}: {e:#}", account.jid)));
            return st;
        }
    };
    let _ = notes.send(Note::Ready);
    let mut out = String::new();
    loop {
        let ev = tokio::select! {
            _ = stop.changed() => break,
            ev = conn.next_event() => ev,
        };
        let el = match ev {
            Ok(StreamEvent::Element(el)) => el,
            Ok(other) => {
                st.errors.push(format!("{}: stream ended: {other:?}", account.jid));
                let _ = notes.send(Note::Failed);
                return st;
            }
            Err(e) => {
                st.errors.push(format!("{}: {e:#}", account.jid));
                let _ = notes.send(Note::Failed);
                return st;
            }
        };
        // Presence (our own, reflected) and anything else without a body is not the load.
        if el.name() != "message" {
            continue;
        }
        let msg = match Message::parse(&el) {
            Ok(m) => m,
            Err(e) => {
                st.unexpected += 1;
                note(&mut st.unexpected_samples, format!("unparsable message: {e}"));
                continue;
            }
        };
        let (Some(body), Some(id)) = (&msg.body, &msg.id) else {
            let what = format!("{el}");
            if ctx.running() {
                st.unexpected += 1;
                note(&mut st.unexpected_samples, what);
            } else {
                st.setup_downs += 1;
                note(&mut st.setup_samples, what);
            }
            continue;
        };
        if msg.from.as_ref().map(|f| f.to_string()).as_deref() != Some(expected_peer.as_str()) {
            st.wrong_peer += 1;
        }
        // The stanza as the client got it (re-serialised: the same length up to quoting).
        let len = if st.down_payload_bytes == 0 { el.to_string().len() } else { st.down_payload_bytes };
        st.deliver(&ctx, id, body, len, &notes);
        if ctx.receipts && msg.payload("request", NS_RECEIPTS).is_some() {
            receipt_for(&msg, id).write_in_stream(NS_CLIENT, &mut out);
        }
        // Everything already decoded is handled before writing, so receipts for one read of
        // the socket leave in one write (the same bytes as one write each).
        if !out.is_empty() && !conn.has_pending() {
            if let Err(e) = conn.send_raw(&out).await {
                st.errors.push(format!("{}: sending receipts: {e:#}", account.jid));
                let _ = notes.send(Note::Failed);
                return st;
            }
            out.clear();
        }
    }
    conn.close().await;
    st
}

fn note(samples: &mut Vec<String>, mut what: String) {
    if samples.len() < 3 {
        what.truncate(200);
        samples.push(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_answers_the_sender_with_the_message_id() {
        let el = Element::new("message", NS_CLIENT)
            .with_attr("from", "ws0@bench.test/phone")
            .with_attr("to", "wr0@xmpp.bench")
            .with_attr("id", "AAAAAB")
            .with_attr("type", "chat")
            .with_child(Element::new("body", NS_CLIENT).with_text("1"))
            .with_child(Element::new("request", NS_RECEIPTS));
        let msg = Message::parse(&el).unwrap();
        let mut out = String::new();
        receipt_for(&msg, "AAAAAB").write_in_stream(NS_CLIENT, &mut out);
        assert_eq!(
            out,
            "<message to='ws0@bench.test/phone' id='rAAAAAB' type='chat'>\
             <received xmlns='urn:xmpp:receipts' id='AAAAAB'/></message>"
        );
    }
}
