use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

/// A hostname of exactly `n` bytes made of labels no longer than 63 bytes.
fn domain_of_len(n: usize) -> String {
    let mut out = String::new();
    let mut rem = n;
    while rem > MAX_LABEL_LEN {
        // Leave at least one byte for the final label after the dot.
        let take = MAX_LABEL_LEN.min(rem - 2);
        out.push_str(&"a".repeat(take));
        out.push('.');
        rem -= take + 1;
    }
    out.push_str(&"a".repeat(rem));
    assert_eq!(out.len(), n);
    out
}

#[test]
fn valid_vectors_normalise() {
    let cases: &[(&str, &str)] = &[
        ("example.com", "example.com"),
        ("alice@example.com", "alice@example.com"),
        ("alice@example.com/phone", "alice@example.com/phone"),
        ("Alice@Example.COM/Phone", "alice@example.com/Phone"),
        ("example.com.", "example.com"),
        ("alice@example.com./r", "alice@example.com/r"),
        ("a@b/c/d", "a@b/c/d"),
        ("a@b/c@d", "a@b/c@d"),
        ("a/b@c", "a/b@c"),
        ("localhost", "localhost"),
        ("a-b.c-d", "a-b.c-d"),
        ("123.com", "123.com"),
        ("a.b2", "a.b2"),
        ("xn--mnchen-3ya.de", "xn--mnchen-3ya.de"),
        ("ÄLICE@MÜNCHEN.DE", "älice@münchen.de"),
        ("ΣΑΣ@ΕΛ.gr", "σασ@ελ.gr"),
        ("\u{212A}@x", "k@x"),
        ("İ@x", "i\u{307}@x"),
        ("!#$%*+-=?^_`{|}~.@example.com", "!#$%*+-=?^_`{|}~.@example.com"),
        ("juliet@example.com/ foo ", "juliet@example.com/ foo "),
        ("juliet@example.com/balcony ☃ <&>", "juliet@example.com/balcony ☃ <&>"),
        ("☃.net", "☃.net"),
        ("127.0.0.1", "127.0.0.1"),
        ("user@127.0.0.1.", "user@127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[0:0:0::0001]", "[::1]"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
        ("[::ffff:1.2.3.4]", "[::ffff:1.2.3.4]"),
        ("alice@[::1]./Res", "alice@[::1]/Res"),
    ];
    for &(input, want) in cases {
        let j = jid(input);
        assert_eq!(j.to_string(), want, "normalising {input:?}");
        assert_eq!(jid(want), j, "normal form of {input:?} should parse to itself");
    }
}

#[test]
fn invalid_vectors_give_exact_error() {
    use JidError::*;
    let label64 = format!("{}.com", "a".repeat(64));
    let cases: &[(&str, JidError)] = &[
        ("", EmptyDomain),
        (".", EmptyDomain),
        ("alice@", EmptyDomain),
        ("alice@/r", EmptyDomain),
        ("/r", EmptyDomain),
        ("alice@./r", EmptyDomain),
        ("@example.com", EmptyLocal),
        ("@", EmptyLocal),
        ("@/", EmptyLocal),
        ("example.com/", EmptyResource),
        ("a@example.com/", EmptyResource),
        ("al ice@x", LocalForbiddenChar(' ')),
        ("a\"b@x", LocalForbiddenChar('"')),
        ("a&b@x", LocalForbiddenChar('&')),
        ("a'b@x", LocalForbiddenChar('\'')),
        ("a:b@x", LocalForbiddenChar(':')),
        ("a<b@x", LocalForbiddenChar('<')),
        ("a>b@x", LocalForbiddenChar('>')),
        ("a\0b@x", LocalForbiddenChar('\0')),
        ("a\u{7f}@x", LocalForbiddenChar('\u{7f}')),
        ("a\u{a0}b@x", LocalForbiddenChar('\u{a0}')),
        ("a\u{200b}@x", LocalForbiddenChar('\u{200b}')),
        ("a\u{ad}@x", LocalForbiddenChar('\u{ad}')),
        ("a\u{fffe}@x", LocalForbiddenChar('\u{fffe}')),
        ("\u{ff41}lice@x", LocalForbiddenChar('\u{ff41}')),
        ("a@b@c", DomainForbiddenChar('@')),
        ("exa mple.com", DomainForbiddenChar(' ')),
        ("exa\tmple.com", DomainForbiddenChar('\t')),
        ("exa\u{3000}mple.com", DomainForbiddenChar('\u{3000}')),
        ("example_com", DomainForbiddenChar('_')),
        ("ex!ample.com", DomainForbiddenChar('!')),
        ("example.com:5222", DomainForbiddenChar(':')),
        ("::1", DomainForbiddenChar(':')),
        ("::1]", DomainForbiddenChar(':')),
        ("a]", DomainForbiddenChar(']')),
        ("a\u{3002}b", DomainForbiddenChar('\u{3002}')),
        ("a\u{200d}b.com", DomainForbiddenChar('\u{200d}')),
        ("ｅxample.com", DomainForbiddenChar('ｅ')),
        ("example..com", DomainEmptyLabel),
        (".example.com", DomainEmptyLabel),
        ("example.com..", DomainEmptyLabel),
        (label64.as_str(), DomainLabelTooLong(64)),
        ("-example.com", DomainLabelHyphen),
        ("example-.com", DomainLabelHyphen),
        ("a.-", DomainLabelHyphen),
        ("1.2.3.999", InvalidIpv4),
        ("01.2.3.4", InvalidIpv4),
        ("1.2.3", InvalidIpv4),
        ("1.2.3.4.5", InvalidIpv4),
        ("123", InvalidIpv4),
        ("example.42", InvalidIpv4),
        ("[::1", InvalidIpv6),
        ("[::g]", InvalidIpv6),
        ("[]", InvalidIpv6),
        ("[1.2.3.4]", InvalidIpv6),
        ("[fe80::1%eth0]", InvalidIpv6),
        ("[[::1]]", InvalidIpv6),
        ("x@y/a\u{7}b", ResourceForbiddenChar('\u{7}')),
        ("x@y/a\nb", ResourceForbiddenChar('\n')),
        ("x@y/\u{85}", ResourceForbiddenChar('\u{85}')),
        // The leftmost faulty part is the one reported.
        ("a b@c d/\0", LocalForbiddenChar(' ')),
        ("a@c d/\0", DomainForbiddenChar(' ')),
    ];
    for (input, want) in cases {
        assert_eq!(Jid::parse(input).as_ref(), Err(want), "parsing {input:?}");
        assert_eq!(input.parse::<Jid>().as_ref(), Err(want), "FromStr on {input:?}");
    }
}

#[test]
fn new_rejects_separators_inside_parts() {
    use JidError::*;
    assert_eq!(Jid::new(Some("a/b"), "x", None), Err(LocalForbiddenChar('/')));
    assert_eq!(Jid::new(Some("a@b"), "x", None), Err(LocalForbiddenChar('@')));
    assert_eq!(Jid::new(None, "x/y", None), Err(DomainForbiddenChar('/')));
    assert_eq!(Jid::new(None, "x@y", None), Err(DomainForbiddenChar('@')));
    assert_eq!(Jid::new(Some(""), "x", None), Err(EmptyLocal));
    assert_eq!(Jid::new(None, "", None), Err(EmptyDomain));
    assert_eq!(Jid::new(None, "x", Some("")), Err(EmptyResource));
    assert_eq!(Jid::new(None, "x", Some("a/b@c")), Ok(jid("x/a/b@c")));
    assert_eq!(Jid::new(Some("A"), "B.", Some("C")), Ok(jid("a@b/C")));
}

#[test]
fn length_boundaries() {
    use JidError::*;
    let max = "a".repeat(MAX_PART_LEN);
    let over = "a".repeat(MAX_PART_LEN + 1);

    let j = jid(&format!("{max}@x"));
    assert_eq!(j.local(), Some(max.as_str()));
    assert_eq!(Jid::parse(&format!("{over}@x")), Err(LocalTooLong(1024)));

    let j = jid(&format!("x/{max}"));
    assert_eq!(j.resource(), Some(max.as_str()));
    assert_eq!(Jid::parse(&format!("x/{over}")), Err(ResourceTooLong(1024)));

    let d = domain_of_len(MAX_PART_LEN);
    assert_eq!(jid(&d).domain(), d);
    // The root dot is stripped before measuring.
    assert_eq!(jid(&format!("{d}.")).domain(), d);
    assert_eq!(Jid::parse(&domain_of_len(MAX_PART_LEN + 1)), Err(DomainTooLong(1024)));

    // All three parts at their maximum at once (also exercises the u16 offsets).
    let j = jid(&format!("{max}@{d}/{max}"));
    assert_eq!((j.local(), j.domain(), j.resource()), (Some(&*max), &*d, Some(&*max)));

    // Labels: 63 bytes fine, 64 not.
    let l63 = "b".repeat(63);
    assert_eq!(jid(&format!("{l63}.com")).domain(), format!("{l63}.com"));
    assert_eq!(Jid::parse(&format!("x.{l63}b")), Err(DomainLabelTooLong(64)));

    // Multi-byte resource: 341 * 3 bytes = 1023.
    let euros = "€".repeat(341);
    assert_eq!(jid(&format!("x/{euros}")).resource(), Some(euros.as_str()));
    assert_eq!(Jid::parse(&format!("x/{euros}a")), Err(ResourceTooLong(1024)));
}

#[test]
fn length_is_measured_after_lowercasing() {
    use JidError::*;
    // U+023A is 2 bytes; its lowercase U+2C65 is 3.
    let grows = "\u{23a}".repeat(511);
    assert_eq!(grows.len(), 1022);
    assert_eq!(Jid::parse(&format!("{grows}@x")), Err(LocalTooLong(1533)));
    let label = "\u{23a}".repeat(30);
    assert_eq!(Jid::parse(&format!("{label}.com")), Err(DomainLabelTooLong(90)));
}

#[test]
fn accessors() {
    let full = jid("Alice@Example.com/Phone");
    assert_eq!(full.local(), Some("alice"));
    assert_eq!(full.domain(), "example.com");
    assert_eq!(full.resource(), Some("Phone"));
    assert!(!full.is_bare());
    assert_eq!(full.bare_str(), "alice@example.com");

    let bare = full.to_bare();
    assert!(bare.is_bare());
    assert_eq!(bare, jid("alice@example.com"));
    assert_eq!(bare.resource(), None);
    assert_eq!(bare.to_bare(), bare);
    assert_eq!(bare.with_resource("Phone"), Ok(full.clone()));
    assert_eq!(full.with_resource("tablet"), Ok(jid("alice@example.com/tablet")));
    assert_eq!(full.with_resource(""), Err(JidError::EmptyResource));
    assert_eq!(full.with_resource("a\0"), Err(JidError::ResourceForbiddenChar('\0')));

    let domain_only = jid("example.com/r");
    assert_eq!(domain_only.local(), None);
    assert_eq!(domain_only.domain(), "example.com");
    assert_eq!(domain_only.bare_str(), "example.com");
    assert_eq!(domain_only.to_bare().to_string(), "example.com");
}

#[test]
fn formatting() {
    let j = jid("Alice@X/y");
    assert_eq!(format!("{j}"), "alice@x/y");
    assert_eq!(format!("{j:?}"), "Jid(\"alice@x/y\")");
    assert_eq!(format!("{j:>10}|"), " alice@x/y|");
    assert_eq!(format!("{:?}", jid("x/\"q\"")), r#"Jid("x/\"q\"")"#);
}

#[test]
fn equality_hash_and_order_follow_normal_form() {
    let set: HashSet<Jid> = ["ALICE@X", "alice@x", "Alice@X.", "alice@x/r"].iter().map(|s| jid(s)).collect();
    assert_eq!(set.len(), 2);
    assert_ne!(jid("a@x/R"), jid("a@x/r"));
    let mut v = [jid("b@x"), jid("a@y"), jid("a@x/r"), jid("a@x")];
    v.sort();
    let sorted: Vec<String> = v.iter().map(Jid::to_string).collect();
    assert_eq!(sorted, ["a@x", "a@x/r", "a@y", "b@x"]);
}

#[test]
fn error_messages_are_distinct() {
    use JidError::*;
    let all = [
        EmptyLocal,
        EmptyDomain,
        EmptyResource,
        LocalTooLong(1024),
        DomainTooLong(1024),
        ResourceTooLong(1024),
        LocalForbiddenChar('x'),
        DomainForbiddenChar('x'),
        ResourceForbiddenChar('x'),
        DomainEmptyLabel,
        DomainLabelTooLong(64),
        DomainLabelHyphen,
        InvalidIpv4,
        InvalidIpv6,
    ];
    let msgs: HashSet<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(msgs.len(), all.len());
}

/// Round-tripping relies on lowercasing being idempotent for every char.
#[test]
fn char_lowercase_is_idempotent() {
    for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
        let once: String = c.to_lowercase().collect();
        assert_eq!(lowercase(&once), once, "U+{:04X}", u32::from(c));
    }
}

fn part(chars: impl Strategy<Value = char>) -> impl Strategy<Value = String> {
    prop::collection::vec(chars, 1..12).prop_map(|v| v.into_iter().collect())
}

/// Candidate JIDs: mostly-valid shapes with hostile characters mixed in.
fn jidlike() -> impl Strategy<Value = String> {
    let local_char = prop_oneof![
        4 => prop::char::range('a', 'z'),
        2 => prop::char::range('A', 'Z'),
        1 => prop::sample::select(vec!['Σ', 'İ', '\u{212A}', 'Ⱥ', 'ẞ', 'ǅ', '.', '-', '!', '@', '/', ' ']),
        1 => any::<char>(),
    ];
    let host = prop_oneof![
        6 => "[a-zA-Z0-9ÄÖÜΣ]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?(\\.[a-zA-Z0-9ÉΣ-]{1,8}){0,3}\\.?",
        1 => any::<Ipv4Addr>().prop_map(|a| a.to_string()),
        1 => any::<Ipv6Addr>().prop_map(|a| format!("[{a}]")),
        1 => any::<Ipv6Addr>().prop_map(|a| format!("[{a:?}]").to_uppercase()),
        1 => part(any::<char>()),
    ];
    let resource = prop_oneof![
        3 => "[ -~]{1,12}",
        1 => part(any::<char>()),
    ];
    (prop::option::of(part(local_char)), host, prop::option::of(resource)).prop_map(|(l, d, r)| {
        let mut s = String::new();
        if let Some(l) = l {
            s.push_str(&l);
            s.push('@');
        }
        s.push_str(&d);
        if let Some(r) = r {
            s.push('/');
            s.push_str(&r);
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics(s in any::<String>()) {
        let _ = Jid::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_jidlike(s in jidlike()) {
        let _ = Jid::parse(&s);
    }

    #[test]
    fn display_then_parse_is_identity(s in prop_oneof![jidlike(), any::<String>()]) {
        if let Ok(j) = Jid::parse(&s) {
            let shown = j.to_string();
            let again = Jid::parse(&shown);
            prop_assert_eq!(again.as_ref(), Ok(&j), "{:?} -> {:?}", s, shown);
            prop_assert_eq!(Jid::new(j.local(), j.domain(), j.resource()), Ok(j.clone()));
            prop_assert_eq!(j.to_bare().to_string(), j.bare_str());
            if let Some(r) = j.resource() {
                prop_assert_eq!(j.to_bare().with_resource(r), Ok(j.clone()));
            }
        }
    }
}
