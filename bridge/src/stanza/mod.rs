//! Stanzas of RFC 6120 §8 and RFC 6121: message, presence, iq, and stanza errors.
