//! The client side of XEP-0198 stream management: enable with resumption, count the stanzas
//! handled (`h`), answer the server's ack requests, and resume a dropped session (§5).

use anyhow::{bail, Context};
use tern_bridge::stream::NS_CLIENT;
use tern_bridge::Element;

use super::conn::Conn;

/// XEP-0198 version 3's namespace.
pub const NS_SM: &str = "urn:xmpp:sm:3";

/// A stream-managed session: the id to resume it by and the stanzas we handled so far.
#[derive(Clone, Debug, Default)]
pub struct Managed {
    /// The resumption id from `<enabled/>`.
    pub id: String,
    /// Stanzas received and handled since `<enabled/>` (§4: modulo 2^32).
    pub h: u32,
}

impl Managed {
    /// Counts `el` if it is a stanza; answers it if it is an ack request. Returns whether it
    /// was stream-management traffic (nothing for the application).
    pub async fn on_element(&mut self, conn: &mut Conn, el: &Element) -> anyhow::Result<bool> {
        if is_stanza(el) {
            self.h = self.h.wrapping_add(1);
            return Ok(false);
        }
        if el.is("r", NS_SM) {
            conn.send(&self.ack()).await?;
        }
        Ok(el.ns() == NS_SM)
    }

    /// `<a h=…/>`: what we handled.
    pub fn ack(&self) -> Element {
        Element::new("a", NS_SM).with_attr("h", self.h.to_string())
    }
}

/// Whether `el` is a stanza (what `h` counts): message, presence or iq of the client stream.
pub fn is_stanza(el: &Element) -> bool {
    el.ns() == NS_CLIENT && matches!(el.name(), "message" | "presence" | "iq")
}

/// Sends `<enable resume='true'/>` on a bound stream and waits for `<enabled/>`; stanzas
/// before it are not counted (§4), and nothing else should come in between on a fresh session.
pub async fn enable(conn: &mut Conn) -> anyhow::Result<Managed> {
    conn.send(&Element::new("enable", NS_SM).with_attr("resume", "true")).await?;
    loop {
        let el = conn.next_element().await?;
        if el.is("enabled", NS_SM) {
            let id = el.attr("id").context("<enabled/> without a resumption id")?;
            return Ok(Managed { id: id.to_owned(), h: 0 });
        }
        if el.is("failed", NS_SM) {
            bail!("stream management refused: {el}");
        }
    }
}

/// Asks to resume `m` on an authenticated, unbound stream (§5). `Ok(true)`: `<resumed/>`, and
/// the server now resends what we had not acknowledged; `Ok(false)`: `<failed/>`, the session
/// is gone and the stream is still usable for a fresh bind.
pub async fn resume(conn: &mut Conn, m: &Managed) -> anyhow::Result<bool> {
    let ask =
        Element::new("resume", NS_SM).with_attr("previd", m.id.as_str()).with_attr("h", m.h.to_string());
    conn.send(&ask).await?;
    let el = conn.next_element().await?;
    if el.is("resumed", NS_SM) {
        return Ok(true);
    }
    if el.is("failed", NS_SM) {
        return Ok(false);
    }
    bail!("expected <resumed/> or <failed/>, got {el}")
}
