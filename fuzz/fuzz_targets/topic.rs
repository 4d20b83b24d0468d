//! Topic names and filters: whatever parses must stay in the user's namespace.
#![no_main]

use tern::ids::UserName;
use tern::topic::{parse_filter, parse_publish, strip_namespace, PublishTarget, SubscribeTarget};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let user = UserName::parse("alice").expect("a valid literal name");
    if let Ok(PublishTarget::Plain(t)) = parse_publish(s) {
        assert_eq!(strip_namespace(&user, &t.in_namespace(&user)), Some(s));
    }
    if let Ok(SubscribeTarget::Plain(f)) = parse_filter(s) {
        assert!(f.in_namespace(&user).starts_with("t/alice/"));
    }
});
