//! The phone-facing topic scheme (MQTT 3.1.1 §4.7) and its mapping into the router's per-user namespace.
//!
//! A client names topics relative to itself. `u` carries its upward envelopes, `d` its downward
//! ones, and every other name is a plain topic inside the user's own subtree. The router only ever
//! sees `t/<user>/<name>`, so a client can name neither another user's topic nor a `$` topic:
//! isolation is a property of the mapping, not a check that could be forgotten.

use crate::ids::UserName;

/// Longest topic name or filter a client may use, in bytes.
pub const MAX_TOPIC: usize = 256;
/// Most levels in a client topic or filter.
pub const MAX_LEVELS: usize = 16;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// An empty topic.
    #[error("empty topic")]
    Empty,
    /// Over [`MAX_TOPIC`] bytes or [`MAX_LEVELS`] levels.
    #[error("topic too long")]
    TooLong,
    /// `$` topics (`$SYS`, `$share/...`) are the server's.
    #[error("topics starting with '$' are reserved")]
    Reserved,
    /// A wildcard in a topic name, or a misplaced wildcard in a filter.
    #[error("bad wildcard")]
    BadWildcard,
    /// NUL, which MQTT forbids in strings.
    #[error("NUL in topic")]
    Nul,
    /// Clients may not publish on `d`, nor subscribe to `u`.
    #[error("wrong direction for this topic")]
    WrongDirection,
}

/// Where a client's PUBLISH goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTarget {
    /// Topic `u`: an upward envelope for the session protocol.
    Up,
    /// Any other valid name: a plain topic in the user's namespace.
    Plain(PlainTopic),
}

/// What a client's SUBSCRIBE asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeTarget {
    /// Topic `d`: the session's downward envelopes (already implied by every session).
    Down,
    /// A filter over the user's plain topics.
    Plain(TopicFilter),
}

/// A validated plain topic name, relative to its user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlainTopic(String);

/// A validated plain topic filter, relative to its user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter(String);

impl PlainTopic {
    /// The name as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The router-side topic in `user`'s namespace.
    pub fn in_namespace(&self, user: &UserName) -> String {
        format!("t/{}/{}", user.as_str(), self.0)
    }
}

impl TopicFilter {
    /// The filter as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The router-side filter confined to `user`'s namespace.
    pub fn in_namespace(&self, user: &UserName) -> String {
        format!("t/{}/{}", user.as_str(), self.0)
    }
}

/// Parses the topic of a client PUBLISH.
pub fn parse_publish(topic: &str) -> Result<PublishTarget, TopicError> {
    check_common(topic)?;
    match topic {
        "u" => Ok(PublishTarget::Up),
        "d" => Err(TopicError::WrongDirection),
        _ if topic.contains(['+', '#']) => Err(TopicError::BadWildcard),
        _ => Ok(PublishTarget::Plain(PlainTopic(topic.to_owned()))),
    }
}

/// Parses one filter of a client SUBSCRIBE or UNSUBSCRIBE.
pub fn parse_filter(filter: &str) -> Result<SubscribeTarget, TopicError> {
    check_common(filter)?;
    match filter {
        "d" => return Ok(SubscribeTarget::Down),
        "u" => return Err(TopicError::WrongDirection),
        _ => {}
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let last = i + 1 == levels.len();
        let ok = match *level {
            "#" => last,
            "+" => true,
            l => !l.contains(['+', '#']),
        };
        if !ok {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(SubscribeTarget::Plain(TopicFilter(filter.to_owned())))
}

/// Strips `user`'s namespace from a router topic, giving the name the client knows it by.
pub fn strip_namespace<'a>(user: &UserName, router_topic: &'a str) -> Option<&'a str> {
    router_topic.strip_prefix("t/")?.strip_prefix(user.as_str())?.strip_prefix('/')
}

fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC || topic.split('/').count() > MAX_LEVELS {
        return Err(TopicError::TooLong);
    }
    if topic.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alice() -> UserName {
        UserName::parse("alice").unwrap()
    }

    #[test]
    fn session_topics() {
        assert_eq!(parse_publish("u"), Ok(PublishTarget::Up));
        assert_eq!(parse_publish("d"), Err(TopicError::WrongDirection));
        assert_eq!(parse_filter("d"), Ok(SubscribeTarget::Down));
        assert_eq!(parse_filter("u"), Err(TopicError::WrongDirection));
    }

    #[test]
    fn hostile_filters_stay_inside_the_namespace() {
        for f in ["#", "+/#", "+", "t/bob/#", "../bob"] {
            let SubscribeTarget::Plain(filter) = parse_filter(f).unwrap() else {
                panic!("{f} should be a plain filter");
            };
            assert!(filter.in_namespace(&alice()).starts_with("t/alice/"));
        }
        assert_eq!(parse_filter("$share/g/#"), Err(TopicError::Reserved));
        assert_eq!(parse_filter("$SYS/#"), Err(TopicError::Reserved));
        assert_eq!(parse_filter("a/#/b"), Err(TopicError::BadWildcard));
        assert_eq!(parse_filter("a+/b"), Err(TopicError::BadWildcard));
    }

    #[test]
    fn publish_names_refuse_wildcards_and_reserved() {
        assert_eq!(parse_publish("a/+"), Err(TopicError::BadWildcard));
        assert_eq!(parse_publish("$tern/w/bob"), Err(TopicError::Reserved));
        assert_eq!(parse_publish(""), Err(TopicError::Empty));
        assert_eq!(parse_publish("a\0b"), Err(TopicError::Nul));
        assert_eq!(parse_publish(&"a/".repeat(20)), Err(TopicError::TooLong));
        let PublishTarget::Plain(t) = parse_publish("sensors/temp").unwrap() else {
            panic!("plain expected");
        };
        assert_eq!(t.in_namespace(&alice()), "t/alice/sensors/temp");
        assert_eq!(strip_namespace(&alice(), "t/alice/sensors/temp"), Some("sensors/temp"));
        assert_eq!(strip_namespace(&alice(), "t/alicex/s"), None);
    }

    proptest! {
        #[test]
        fn any_accepted_topic_maps_into_its_own_namespace(s in "\\PC{0,300}") {
            if let Ok(PublishTarget::Plain(t)) = parse_publish(&s) {
                let routed = t.in_namespace(&alice());
                prop_assert_eq!(strip_namespace(&alice(), &routed), Some(s.as_str()));
            }
            if let Ok(SubscribeTarget::Plain(f)) = parse_filter(&s) {
                prop_assert!(f.in_namespace(&alice()).starts_with("t/alice/"));
            }
        }
    }
}
