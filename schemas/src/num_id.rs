//! Numeric message ids (docs/PROTOCOL.md "Numeric ids"): a `uint64 num_id` stands for one
//! string id, its canonical rendering, so that a phone counting its messages sends a varint
//! of two or three bytes where a string id costs its length plus two.
//!
//! The rendering is the number in base 64 with the URL-safe alphabet of RFC 4648 §5, most
//! significant digit first, with no leading zero digit (`A`). Every number from 1 up has
//! exactly one rendering and every rendering exactly one number, so a string id and its
//! numeric form name the same message everywhere (dedupe, receipts, XMPP stanzas).

const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The string id that `n` stands for; `None` for 0, which means "no numeric id".
pub fn render(mut n: u64) -> Option<String> {
    if n == 0 {
        return None;
    }
    // u64::MAX needs 11 digits (64^11 = 2^66).
    let mut digits = [0u8; 11];
    let mut at = digits.len();
    while n > 0 {
        at -= 1;
        digits[at] = DIGITS[(n % 64) as usize];
        n /= 64;
    }
    Some(digits[at..].iter().map(|&d| d as char).collect())
}

/// The number whose rendering is `id`, if `id` is one (else it stays a string id).
pub fn parse(id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    if bytes.is_empty() || bytes.len() > 11 || bytes[0] == b'A' {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &c| {
        let digit = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        n.checked_mul(64)?.checked_add(u64::from(digit))
    })
}

/// Moves `id` into `num_id` when it is a rendering, as a device that asked for numbers gets
/// it; true if it did.
pub fn compact(id: &mut String, num_id: &mut u64) -> bool {
    let Some(n) = parse(id) else { return false };
    id.clear();
    *num_id = n;
    true
}

/// Moves `num_id`, if set, back into `id` as its rendering; false if both were set (the
/// number replaced the string).
pub fn expand(id: &mut String, num_id: &mut u64) -> bool {
    let Some(rendered) = render(std::mem::take(num_id)) else { return true };
    let alone = id.is_empty();
    *id = rendered;
    alone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_numbers_render_short() {
        assert_eq!(render(0), None);
        assert_eq!(render(1).as_deref(), Some("B"));
        assert_eq!(render(63).as_deref(), Some("_"));
        assert_eq!(render(64).as_deref(), Some("BA"));
        assert_eq!(render(1000).as_deref(), Some("Po"));
        assert_eq!(render(u64::MAX).as_deref(), Some("P__________"));
    }

    #[test]
    fn only_canonical_renderings_parse() {
        assert_eq!(parse("Po"), Some(1000));
        assert_eq!(parse("P__________"), Some(u64::MAX));
        // A leading zero digit, an empty id, a character outside the alphabet, padding,
        // and a number past u64 all stay string ids.
        for id in ["", "A", "APo", "P o", "Po=", "Q__________", "BAAAAAAAAAAA", "é"] {
            assert_eq!(parse(id), None, "{id:?}");
        }
    }

    #[test]
    fn every_number_round_trips() {
        let mut n = 1u64;
        while n < u64::MAX / 3 {
            for m in [n - 1, n, n + 1].into_iter().filter(|&m| m > 0) {
                assert_eq!(parse(&render(m).unwrap()), Some(m));
            }
            n *= 3;
        }
        assert_eq!(parse(&render(u64::MAX).unwrap()), Some(u64::MAX));
    }

    #[test]
    fn compact_and_expand_move_an_id_between_its_forms() {
        let (mut id, mut n) = ("Po".to_owned(), 0);
        assert!(compact(&mut id, &mut n));
        assert_eq!((id.as_str(), n), ("", 1000));
        assert!(expand(&mut id, &mut n));
        assert_eq!((id.as_str(), n), ("Po", 0));
        let (mut kept, mut none) = ("m.2".to_owned(), 0);
        assert!(!compact(&mut kept, &mut none));
        assert!(expand(&mut kept, &mut none));
        assert_eq!((kept.as_str(), none), ("m.2", 0));
        let (mut both, mut n) = ("m.2".to_owned(), 64);
        assert!(!expand(&mut both, &mut n));
        assert_eq!((both.as_str(), n), ("BA", 0));
    }

    proptest::proptest! {
        #[test]
        fn numbers_and_renderings_are_one_to_one(n in 1u64.., id in "[A-Za-z0-9_=-]{0,12}") {
            proptest::prop_assert_eq!(parse(&render(n).unwrap()), Some(n));
            if let Some(m) = parse(&id) {
                proptest::prop_assert_eq!(render(m), Some(id));
            }
        }
    }
}
