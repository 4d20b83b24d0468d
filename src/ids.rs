//! Newtypes for the names tern trusts once parsed: users, devices, message ids, sequence numbers.

use std::fmt;

/// Why a name from the network or the CLI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("empty")]
    Empty,
    /// The name is longer than its limit.
    #[error("longer than {0} bytes")]
    TooLong(usize),
    /// The name holds a character that is not allowed there.
    #[error("character {0:?} is not allowed")]
    BadChar(char),
}

/// Longest user name: it doubles as an XMPP localpart and a topic segment.
pub const MAX_USER: usize = 64;
/// Longest device id: it doubles as an XMPP resource and an MQTT client id.
pub const MAX_DEVICE: usize = 64;
/// Longest client-chosen envelope id.
pub const MAX_MSG_ID: usize = 128;

/// A tern user: the localpart of `user@domain`. Lowercase ASCII letters, digits, `.`, `_`, `-`.
///
/// The alphabet is narrower than RFC 7622 allows on purpose: the name is also an MQTT topic
/// segment and a sled key prefix, where `+`, `#`, `/` and NUL would be dangerous.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

impl UserName {
    /// Parses a user name, folding ASCII case.
    pub fn parse(s: &str) -> Result<UserName, NameError> {
        let lower = s.to_ascii_lowercase();
        check_chars(&lower, MAX_USER, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
        })?;
        Ok(UserName(lower))
    }
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A device of a user: the MQTT client id and the XMPP resource. ASCII letters, digits, `.`, `_`, `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

impl DeviceId {
    /// Parses a device id; case is kept, as resources are case-sensitive.
    pub fn parse(s: &str) -> Result<DeviceId, NameError> {
        check_chars(s, MAX_DEVICE, |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))?;
        Ok(DeviceId(s.to_owned()))
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client-chosen message or envelope id: printable, no control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(String);

impl MsgId {
    /// Parses an id from an envelope.
    pub fn parse(s: &str) -> Result<MsgId, NameError> {
        check_chars(s, MAX_MSG_ID, |c| !c.is_control())?;
        Ok(MsgId(s.to_owned()))
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A position in a user's inbox. Sequence numbers start at 1; 0 means "before everything".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The position after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

fn check_chars(s: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > max {
        return Err(NameError::TooLong(max));
    }
    match s.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.0)
            }
        }
    )*};
}
display_as_str!(UserName, DeviceId, MsgId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_fold_case_and_refuse_topic_chars() {
        assert_eq!(UserName::parse("Alice").unwrap().as_str(), "alice");
        assert_eq!(UserName::parse(""), Err(NameError::Empty));
        assert_eq!(UserName::parse("a+b"), Err(NameError::BadChar('+')));
        assert_eq!(UserName::parse("a/b"), Err(NameError::BadChar('/')));
        assert_eq!(UserName::parse("#"), Err(NameError::BadChar('#')));
        assert_eq!(UserName::parse(&"a".repeat(65)), Err(NameError::TooLong(64)));
        assert!(UserName::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn device_ids_keep_case() {
        assert_eq!(DeviceId::parse("Phone-1").unwrap().as_str(), "Phone-1");
        assert_eq!(DeviceId::parse("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(DeviceId::parse("x/y"), Err(NameError::BadChar('/')));
    }

    #[test]
    fn msg_ids_refuse_control_chars() {
        assert!(MsgId::parse("ab-12 ü").is_ok());
        assert_eq!(MsgId::parse("a\u{0}"), Err(NameError::BadChar('\u{0}')));
        assert_eq!(MsgId::parse(&"x".repeat(129)), Err(NameError::TooLong(128)));
    }
}
