//! The presence subscription state machine of RFC 6121 §3 and Appendix A, for one (user, contact).

use tern_schemas::v1::subscription::Kind;

/// Subscription state of a contact from the user's side (RFC 6121 Appendix A.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubState {
    /// The user receives the contact's presence.
    pub to: bool,
    /// The contact receives the user's presence.
    pub from: bool,
    /// The user asked to subscribe and has no answer yet (`ask="subscribe"`).
    pub pending_out: bool,
    /// The contact asked to subscribe and the user has not answered.
    pub pending_in: bool,
}

/// What to do after a subscription stanza changed (or did not change) the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub state: SubState,
    /// Outbound: send it on to the contact. Inbound: deliver it to the user.
    pub pass: bool,
    /// Inbound only: answer the contact automatically with this, without bothering the user.
    pub auto_reply: Option<Kind>,
}

impl SubState {
    /// The user sends `kind` to the contact (RFC 6121 Appendix A.2).
    pub fn outbound(self, kind: Kind) -> Transition {
        let mut s = self;
        let pass = match kind {
            Kind::Subscribe => {
                s.pending_out = !s.to;
                // Routed even when already subscribed, so the contact's server can re-answer.
                true
            }
            Kind::Subscribed => {
                let pass = s.pending_in;
                if s.pending_in {
                    s.from = true;
                    s.pending_in = false;
                }
                pass
            }
            Kind::Unsubscribe => {
                let pass = s.to || s.pending_out;
                s.to = false;
                s.pending_out = false;
                pass
            }
            Kind::Unsubscribed => {
                let pass = s.from || s.pending_in;
                s.from = false;
                s.pending_in = false;
                pass
            }
        };
        Transition { state: s, pass, auto_reply: None }
    }

    /// The contact sends `kind` to the user (RFC 6121 Appendix A.3).
    pub fn inbound(self, kind: Kind) -> Transition {
        let mut s = self;
        let (pass, auto_reply) = match kind {
            // Already approved: the server answers for the user (§3.1.3).
            Kind::Subscribe if s.from => (false, Some(Kind::Subscribed)),
            Kind::Subscribe => {
                let fresh = !s.pending_in;
                s.pending_in = true;
                (fresh, None)
            }
            Kind::Subscribed => {
                let pass = s.pending_out;
                if s.pending_out {
                    s.to = true;
                    s.pending_out = false;
                }
                (pass, None)
            }
            Kind::Unsubscribe => {
                let pass = s.from || s.pending_in;
                s.from = false;
                s.pending_in = false;
                (pass, None)
            }
            Kind::Unsubscribed => {
                let pass = s.to || s.pending_out;
                s.to = false;
                s.pending_out = false;
                (pass, None)
            }
        };
        Transition { state: s, pass, auto_reply }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(to: bool, from: bool, pending_out: bool, pending_in: bool) -> SubState {
        SubState { to, from, pending_out, pending_in }
    }

    /// Two users' views of each other, driven through the whole handshake (RFC 6121 §3.1).
    #[test]
    fn the_full_handshake_both_ways_ends_in_both() {
        let (mut alice, mut bob) = (SubState::default(), SubState::default());
        // alice → subscribe → bob
        let t = alice.outbound(Kind::Subscribe);
        assert!(t.pass);
        alice = t.state;
        let t = bob.inbound(Kind::Subscribe);
        assert!(t.pass);
        bob = t.state;
        assert_eq!((alice, bob), (state(false, false, true, false), state(false, false, false, true)));
        // bob → subscribed → alice
        let t = bob.outbound(Kind::Subscribed);
        assert!(t.pass);
        bob = t.state;
        let t = alice.inbound(Kind::Subscribed);
        assert!(t.pass);
        alice = t.state;
        assert_eq!((alice, bob), (state(true, false, false, false), state(false, true, false, false)));
        // and the reverse direction
        bob = bob.outbound(Kind::Subscribe).state;
        alice = alice.inbound(Kind::Subscribe).state;
        alice = alice.outbound(Kind::Subscribed).state;
        bob = bob.inbound(Kind::Subscribed).state;
        assert_eq!((alice, bob), (state(true, true, false, false), state(true, true, false, false)));
    }

    #[test]
    fn an_approved_contact_is_answered_by_the_server() {
        let t = state(false, true, false, false).inbound(Kind::Subscribe);
        assert_eq!((t.pass, t.auto_reply), (false, Some(Kind::Subscribed)));
    }

    #[test]
    fn unsolicited_answers_are_dropped() {
        let t = SubState::default().inbound(Kind::Subscribed);
        assert_eq!((t.pass, t.state), (false, SubState::default()));
        let t = SubState::default().outbound(Kind::Subscribed);
        assert!(!t.pass);
        let t = SubState::default().inbound(Kind::Unsubscribe);
        assert!(!t.pass);
    }

    #[test]
    fn cancelling_clears_both_pending_and_granted() {
        let t = state(true, true, false, false).inbound(Kind::Unsubscribed);
        assert_eq!(t.state, state(false, true, false, false));
        assert!(t.pass);
        let t = state(false, false, false, true).outbound(Kind::Unsubscribed);
        assert_eq!(t.state, SubState::default());
        assert!(t.pass);
    }

    #[test]
    fn a_repeated_request_is_delivered_once() {
        let s = SubState::default().inbound(Kind::Subscribe).state;
        assert!(!s.inbound(Kind::Subscribe).pass);
    }
}
