//! The iqs tern answers itself (XEP-0030 disco, XEP-0199 ping, XEP-0092 version), for its domain
//! and on behalf of its users' accounts and devices, which never see iqs (RFC 6120 §8.2.3).

use super::{
    caps, NS_CHATSTATES, NS_CHAT_MARKERS, NS_DISCO_INFO, NS_DISCO_ITEMS, NS_PING, NS_RECEIPTS, NS_VERSION,
};
use crate::stanza::{Condition, Iq, IqType, StanzaError};
use crate::stream::Element;

/// The features tern advertises for its domain, accounts and devices, sorted as XEP-0115
/// hashing wants them. Receipts, markers and chat states are there so peers' clients send them.
pub const FEATURES: [&str; 7] =
    [NS_CHATSTATES, NS_DISCO_INFO, NS_DISCO_ITEMS, NS_VERSION, NS_CHAT_MARKERS, NS_PING, NS_RECEIPTS];

/// The answer to `iq` if it is addressed to `our_domain` or one of its JIDs (a missing `to`
/// means the domain); `version` is what XEP-0092 reports.
///
/// Requests tern does not handle get `service-unavailable`, as RFC 6120 §8.4 requires; results
/// and errors, and iqs for other domains, get `None`.
pub fn answer_iq(iq: &Iq, our_domain: &str, version: &str) -> Option<Iq> {
    if !matches!(iq.type_, IqType::Get | IqType::Set) {
        return None;
    }
    if iq.to.as_ref().is_some_and(|to| to.domain() != our_domain) {
        return None;
    }
    let unavailable = || Some(iq.error_reply(StanzaError::new(Condition::ServiceUnavailable)));
    let Some(payload) = iq.payload.as_ref().filter(|_| iq.type_ == IqType::Get) else {
        return unavailable();
    };
    match (payload.ns(), payload.name()) {
        (NS_DISCO_INFO, "query") => {
            let identity = match (&iq.to, payload.attr("node")) {
                // The only node anything here has is the caps node of a device (XEP-0115
                // §6.2), which any entity of ours may be asked about.
                (_, Some(node)) if node == caps::device_node() => caps::DEVICE_IDENTITY,
                (_, Some(_)) => return Some(iq.error_reply(StanzaError::new(Condition::ItemNotFound))),
                (Some(to), None) if to.local().is_some() && to.resource().is_some() => caps::DEVICE_IDENTITY,
                (Some(to), None) if to.local().is_some() => ("account", "registered", "tern"),
                _ => ("server", "im", "tern"),
            };
            let (category, type_, name) = identity;
            let mut query = payload_shell(payload).with_child(
                Element::new("identity", NS_DISCO_INFO)
                    .with_attr("category", category)
                    .with_attr("type", type_)
                    .with_attr("name", name),
            );
            for var in FEATURES {
                query.push_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", var));
            }
            Some(iq.result_reply(Some(query)))
        }
        // Nothing is listed: tern hosts no components, rooms or nodes.
        (NS_DISCO_ITEMS, "query") => Some(iq.result_reply(Some(payload_shell(payload)))),
        (NS_PING, "ping") => Some(iq.result_reply(None)),
        (NS_VERSION, "query") => Some(
            iq.result_reply(Some(
                Element::new("query", NS_VERSION)
                    .with_child(Element::new("name", NS_VERSION).with_text("tern"))
                    .with_child(Element::new("version", NS_VERSION).with_text(version)),
            )),
        ),
        _ => unavailable(),
    }
}

/// An empty copy of `query` that keeps the `node` the request named (XEP-0030 §4.2).
fn payload_shell(query: &Element) -> Element {
    let mut out = Element::new(query.name(), query.ns());
    if let Some(node) = query.attr("node") {
        out.set_attr("node", node);
    }
    out
}
