//! The bench's XMPP client tasks: a sender that asks for delivery receipts, and a recipient that
//! answers each message with one, as legacy clients do (XEP-0184 §5.1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_bridge::mapping::NS_RECEIPTS;
use tern_bridge::stanza::{Message, MessageType};
use tern_bridge::stream::NS_CLIENT;
use tern_bridge::{Element, Jid, StreamEvent};
use tokio::sync::{mpsc, oneshot, watch};

use super::conn::Conn;
use crate::chat::drivers::{micros_since, Ctx, Note, RecipientStats, Schedule, SenderStats};
use crate::chat::{message_id, BODY_LEN};

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

/// Logs in and reports `Ready`, or reports the setup failure.
async fn login(account: &Account, notes: &mpsc::UnboundedSender<Note>) -> Option<Conn> {
    let a = account;
    match Conn::login(a.addr, &a.jid, &a.password, &a.resource, LOGIN_LIMIT).await {
        Ok(c) => {
            let _ = notes.send(Note::Ready);
            Some(c)
        }
        Err(e) => {
            let _ = notes.send(Note::SetupFailed(format!("{}: {e:#}", a.jid)));
            None
        }
    }
}

/// A broken stream during the load: an error of the phase, which stops waiting.
fn broken(errors: &mut Vec<String>, notes: &mpsc::UnboundedSender<Note>, jid: &Jid, what: String) {
    errors.push(format!("{jid}: {what}"));
    let _ = notes.send(Note::Failed);
}

/// The element a stream event carries; anything else (the stream's end, an error) described.
fn element(ev: anyhow::Result<StreamEvent>) -> Result<Element, String> {
    match ev {
        Ok(StreamEvent::Element(el)) => Ok(el),
        Ok(other) => Err(format!("stream ended: {other:?}")),
        Err(e) => Err(format!("{e:#}")),
    }
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
pub(crate) async fn recipient_driver(
    ctx: Arc<Ctx>,
    account: Account,
    expect: u64,
    expected_peer: String,
    notes: mpsc::UnboundedSender<Note>,
    mut stop: watch::Receiver<bool>,
) -> RecipientStats {
    let mut st = RecipientStats::new(expect);
    let Some(mut conn) = login(&account, &notes).await else { return st };
    let mut out = String::new();
    loop {
        let ev = tokio::select! {
            _ = stop.changed() => break,
            ev = conn.next_event() => ev,
        };
        let el = match element(ev) {
            Ok(el) => el,
            Err(what) => {
                broken(&mut st.errors, &notes, &account.jid, what);
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
        // The stanza as the client got it (re-serialised in the stream: the same length up to
        // quoting).
        let len = if st.down_payload_bytes == 0 {
            let mut stanza = String::new();
            el.write_in_stream(NS_CLIENT, &mut stanza);
            stanza.len()
        } else {
            st.down_payload_bytes
        };
        st.deliver(&ctx, id, body, len, &notes);
        if ctx.receipts && msg.payload("request", NS_RECEIPTS).is_some() {
            receipt_for(&msg, id).write_in_stream(NS_CLIENT, &mut out);
        }
        // Everything already decoded is handled before writing, so receipts for one read of
        // the socket leave in one write (the same bytes as one write each).
        if !out.is_empty() && !conn.has_pending() {
            if let Err(e) = conn.send_raw(&out).await {
                broken(&mut st.errors, &notes, &account.jid, format!("sending receipts: {e:#}"));
                return st;
            }
            out.clear();
        }
    }
    conn.close().await;
    st
}

/// Chat message `k` to `peer`, the send time in the body like the phones' (`chat_up`), asking
/// for a receipt when `receipt`.
pub(crate) fn chat_message(k: u64, peer: &Jid, sent_us: u64, receipt: bool) -> Element {
    let mut m = Message::new(MessageType::Chat);
    m.to = Some(peer.clone());
    m.id = Some(message_id(k));
    m.body = Some(format!("{sent_us:0BODY_LEN$}"));
    if receipt {
        m.payloads.push(Element::new("request", NS_RECEIPTS));
    }
    m.to_element(NS_CLIENT)
}

/// Logs in, reports `Ready`, waits for its schedule, then sends `n` messages to `peer` on it
/// while counting the receipts that come back. With receipts, at most `window` messages are
/// without one (the only acknowledgement a legacy client gets); without, it sends flat out.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn sender_driver(
    ctx: Arc<Ctx>,
    account: Account,
    peer: Jid,
    n: u64,
    window: u16,
    schedule: oneshot::Receiver<Schedule>,
    notes: mpsc::UnboundedSender<Note>,
    mut stop: watch::Receiver<bool>,
) -> SenderStats {
    let mut st = SenderStats::default();
    let Some(mut conn) = login(&account, &notes).await else { return st };
    let schedule = tokio::select! {
        _ = stop.changed() => None,
        s = schedule => s.ok(),
    };
    let Some(schedule) = schedule else {
        conn.close().await;
        return st;
    };
    let mut out = String::new();
    let mut k = 0;
    let mut done = false;
    loop {
        let window_open = !ctx.receipts || k - st.receipts < u64::from(window);
        let due = if k < n && window_open { schedule.due(k) } else { None };
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(due.unwrap_or(schedule.deadline)), if due.is_some() => {
                let at = due.unwrap_or(schedule.deadline);
                if schedule.late(at) {
                    st.late += 1;
                }
                out.clear();
                chat_message(k, &peer, micros_since(ctx.epoch), ctx.receipts).write_in_stream(NS_CLIENT, &mut out);
                st.up_payload_bytes = out.len();
                if let Err(e) = conn.send_raw(&out).await {
                    broken(&mut st.errors, &notes, &account.jid, format!("sending: {e:#}"));
                    return st;
                }
                st.published += 1;
                k += 1;
            }
            ev = conn.next_event() => match element(ev) {
                Ok(el) => {
                    let receipt = el.name() == "message"
                        && el.elements().any(|p| p.is("received", NS_RECEIPTS));
                    if receipt && ctx.running() {
                        st.receipts += 1;
                    } else if el.name() == "message" {
                        st.unexpected += 1;
                        note(&mut st.unexpected_samples, el.to_string());
                    }
                }
                Err(what) => {
                    broken(&mut st.errors, &notes, &account.jid, what);
                    return st;
                }
            },
        }
        if !done && st.published == n && (!ctx.receipts || st.receipts >= n) {
            done = true;
            let _ = notes.send(Note::SenderDone);
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

    #[test]
    fn chat_message_carries_the_id_the_send_time_and_the_receipt_request() {
        let peer = Jid::parse("lr0@bench.test").unwrap();
        let mut out = String::new();
        chat_message(65, &peer, 1234, true).write_in_stream(NS_CLIENT, &mut out);
        assert_eq!(
            out,
            "<message to='lr0@bench.test' id='BC' type='chat'><body>00000000000000001234</body>\
             <request xmlns='urn:xmpp:receipts'/></message>"
        );
        out.clear();
        chat_message(0, &peer, 0, false).write_in_stream(NS_CLIENT, &mut out);
        assert!(!out.contains("request"), "{out}");
    }
}
