//! Mapping between the phone protocol (`tern.v1` envelopes) and XMPP stanzas.
